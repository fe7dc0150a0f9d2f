// File helpers of the io box: read-only mappings, atomic writes, path utilities.

#include "io/fileio.h"

#include "core/core.h"

#include <errno.h>
#include <jansson.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

loom_status loom__map_file(const char *path, const char *what, loom__mapped_file *out) {
    out->data = NULL;
    out->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        int err = errno;
        return loom__error(err == ENOENT ? LOOM_ERR_NOT_FOUND : LOOM_ERR_IO,
                           "cannot open %s '%s': %s", what, path, strerror(err));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return loom__error(LOOM_ERR_IO, "cannot stat %s '%s': %s", what, path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return loom__error(LOOM_ERR_IO, "%s '%s' is not a regular file", what, path);
    }
    if (st.st_size == 0) {
        close(fd);
        return LOOM_OK;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED)
        return loom__error(LOOM_ERR_IO, "cannot map %s '%s' (%lld bytes): %s", what, path,
                           (long long)st.st_size, strerror(err));
    out->data = p;
    out->size = (size_t)st.st_size;
    return LOOM_OK;
}

void loom__unmap_file(loom__mapped_file *m) {
    if (m->data) munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

static void atomic_release(loom__atomic_file *af) {
    loom__free(af->path);
    loom__free(af->tmp_path);
    af->path = af->tmp_path = NULL;
    af->f = NULL;
}

loom_status loom__atomic_open(loom__atomic_file *af, const char *path) {
    af->f = NULL;
    af->path = loom__strdup(path);
    size_t cap = strlen(path) + 32;
    af->tmp_path = loom__malloc(cap);
    if (!af->path || !af->tmp_path) {
        atomic_release(af);
        return LOOM_ERR_NOMEM;
    }
    snprintf(af->tmp_path, cap, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        int err = errno;
        loom__error(LOOM_ERR_IO, "cannot create '%s' (temp file for '%s'): %s", af->tmp_path,
                    path, strerror(err));
        atomic_release(af);
        return LOOM_ERR_IO;
    }
    return LOOM_OK;
}

loom_status loom__atomic_write(loom__atomic_file *af, const void *data, size_t n) {
    if (n == 0) return LOOM_OK;
    if (fwrite(data, 1, n, af->f) != n)
        return loom__error(LOOM_ERR_IO, "cannot write '%s': %s", af->tmp_path, strerror(errno));
    return LOOM_OK;
}

void loom__atomic_abort(loom__atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp_path) unlink(af->tmp_path);
    atomic_release(af);
}

// fsync the directory holding `path` so the rename itself is durable. Best effort: file
// systems that cannot fsync directories (EINVAL) are not an error.
static loom_status fsync_parent_dir(const char *path) {
    char *dir = loom__path_dirname(path);
    if (!dir) return LOOM_ERR_NOMEM;
    loom_status st = LOOM_OK;
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
            st = loom__error(LOOM_ERR_IO, "cannot fsync directory '%s' after writing '%s': %s",
                             dir, path, strerror(errno));
        close(fd);
    }
    loom__free(dir);
    return st;
}

loom_status loom__atomic_commit(loom__atomic_file *af) {
    const char *step = NULL;
    int err = 0;
    if (fflush(af->f) != 0) step = "flush";
    else if (fsync(fileno(af->f)) != 0) step = "fsync";
    if (step) err = errno;
    int close_failed = fclose(af->f) != 0;
    af->f = NULL;
    if (!step && close_failed) {
        step = "close";
        err = errno;
    }
    if (step) {
        loom__error(LOOM_ERR_IO, "cannot %s '%s': %s", step, af->tmp_path, strerror(err));
        loom__atomic_abort(af);
        return LOOM_ERR_IO;
    }
    if (rename(af->tmp_path, af->path) != 0) {
        err = errno;
        loom__error(LOOM_ERR_IO, "cannot rename '%s' to '%s': %s", af->tmp_path, af->path,
                    strerror(err));
        loom__atomic_abort(af);
        return LOOM_ERR_IO;
    }
    loom_status st = fsync_parent_dir(af->path);
    atomic_release(af);
    return st;
}

loom_status loom__write_file_atomic(const char *path, const void *data, size_t n) {
    loom__atomic_file af;
    loom_status st;
    LOOM_CHECK(loom__atomic_open(&af, path));
    LOOM_CHECK_GOTO(loom__atomic_write(&af, data, n), st, fail);
    return loom__atomic_commit(&af);
fail:
    loom__atomic_abort(&af);
    return st;
}

char *loom__path_join(const char *dir, const char *name) {
    size_t nd = strlen(dir), nn = strlen(name);
    int need_slash = nd > 0 && dir[nd - 1] != '/';
    char *out = loom__malloc(nd + (size_t)need_slash + nn + 1);
    if (!out) return NULL;
    memcpy(out, dir, nd);
    if (need_slash) out[nd] = '/';
    memcpy(out + nd + need_slash, name, nn + 1);
    return out;
}

char *loom__path_dirname(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return loom__strdup(".");
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *out = loom__malloc(n + 1);
    if (!out) return NULL;
    memcpy(out, path, n);
    out[n] = '\0';
    return out;
}

loom_status loom__ensure_dir(const char *dir) {
    if (mkdir(dir, 0777) == 0) return LOOM_OK;
    int err = errno;
    struct stat st;
    if (err == EEXIST && stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return LOOM_OK;
    if (err == EEXIST)
        return loom__error(LOOM_ERR_IO, "cannot use '%s' as output directory: it exists and is "
                           "not a directory", dir);
    return loom__error(LOOM_ERR_IO, "cannot create directory '%s': %s%s", dir, strerror(err),
                       err == ENOENT ? " (create its parent directory first)" : "");
}

loom_status loom__mkdirs(const char *dir) {
    char *buf = loom__strdup(dir);
    if (!buf) return LOOM_ERR_NOMEM;
    loom_status st = LOOM_OK;
    for (char *p = buf + 1; st == 0; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        st = loom__ensure_dir(buf);
        *p = saved;
        if (saved == '\0') break;
    }
    loom__free(buf);
    return st;
}

int loom__is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

loom_status loom__remove_stale(const char *dir, const char *name) {
    char *p = loom__path_join(dir, name);
    if (!p) return LOOM_ERR_NOMEM;
    loom_status st = LOOM_OK;
    if (unlink(p) != 0 && errno != ENOENT)
        st = loom__error(LOOM_ERR_IO, "cannot remove stale '%s': %s", p, strerror(errno));
    loom__free(p);
    return st;
}

loom_status loom__write_json_atomic(const char *path, const json_t *root, size_t flags) {
    char *text = root ? json_dumps(root, flags) : NULL;
    if (!text) return loom__error(LOOM_ERR_NOMEM, "writing '%s': cannot serialize the JSON", path);
    size_t len = strlen(text);
    text[len] = '\n';  // replaces the terminator; the length is passed explicitly
    loom_status st = loom__write_file_atomic(path, text, len + 1);
    free(text);
    return st;
}
