// Helpers for the io tests: a scratch directory under /tmp, whole-file writes and reads, and
// error checks that match both the status code and words of loom_last_error().

#ifndef LOOM_IO_TESTUTIL_H
#define LOOM_IO_TESTUTIL_H

#include "testutil.h"

#include "loom/status.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tu_scratch[256];

// Create the scratch directory; returns 0 on success.
static inline int tu_scratch_make(const char *tag) {
    snprintf(tu_scratch, sizeof tu_scratch, "/tmp/loom-%s-XXXXXX", tag);
    return mkdtemp(tu_scratch) ? 0 : -1;
}

// Path of `name` in the scratch directory, in one of a few rotating static buffers.
static inline const char *tu_path(const char *name) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", tu_scratch, name);
    return b;
}

// Remove `path` and, for a directory, everything under it.
static inline void tu_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            size_t n = strlen(path) + strlen(e->d_name) + 2;
            char *child = malloc(n);
            if (!child) break;
            snprintf(child, n, "%s/%s", path, e->d_name);
            tu_remove_tree(child);
            free(child);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

// Number of entries of directory `dir` whose name contains `part`.
static inline int tu_count_entries(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, part)) n++;
    if (d) closedir(d);
    return n;
}

static inline int tu_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

// Whole file into a malloc'd buffer (NULL on failure); *n gets its size.
static inline uint8_t *tu_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static inline int tu_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static inline int tu_has_text(const char *msg, const char *part) {
    return !part || strstr(msg, part) != NULL;
}

static inline const char *tu_str(const char *s) { return s ? s : "(none)"; }

// `expr` must fail with `code`, and loom_last_error() must contain each non-NULL word.
#define CHECK_ERR(expr, code, word1, word2)                                                  \
    do {                                                                                     \
        int tu_st_ = (expr);                                                                 \
        const char *tu_msg_ = loom_last_error();                                             \
        if (getenv("LOOM_TEST_VERBOSE")) fprintf(stderr, "  [%d] %s\n", __LINE__, tu_msg_);  \
        CHECK_MSG(tu_st_ == (code), "status %s, expected %s: %s", loom_status_name(tu_st_),  \
                  loom_status_name(code), tu_msg_);                                          \
        CHECK_MSG(tu_has_text(tu_msg_, word1), "message lacks '%s': %s", tu_str(word1), tu_msg_);    \
        CHECK_MSG(tu_has_text(tu_msg_, word2), "message lacks '%s': %s", tu_str(word2), tu_msg_);    \
    } while (0)

#endif // LOOM_IO_TESTUTIL_H
