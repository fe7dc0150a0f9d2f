// Test helper: run the loom CLI (LOOM_CLI_PATH) as a child process and capture its output
// (stdout and stderr go to files in tu_scratch; stdin is /dev/null).

#ifndef LOOM_TEST_CLI_TESTUTIL_H
#define LOOM_TEST_CLI_TESTUTIL_H

#include "io-testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct run_result {
    int code;     // exit status, or -1 when it did not exit normally
    char *out;    // stdout (malloc'd, NUL-terminated)
    size_t out_len;
    char *err;    // stderr
} run_result;

static inline char *slurp(const char *path, size_t *len) {
    size_t n = 0;
    uint8_t *data = tu_read_file(path, &n);
    char *s = malloc(n + 1);
    if (data && s) memcpy(s, data, n);
    else n = 0;
    if (s) s[n] = '\0';
    free(data);
    if (len) *len = n;
    return s;
}

// Run LOOM_CLI_PATH with the NULL-terminated arguments; stdout and stderr go to files.
static inline run_result run_cli(const char *arg0, ...) {
    const char *argv[64];
    int argc = 0;
    argv[argc++] = LOOM_CLI_PATH;
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a && argc < 63; a = va_arg(ap, const char *)) argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    char out_path[512], err_path[512];
    snprintf(out_path, sizeof out_path, "%s/.stdout", tu_scratch);
    snprintf(err_path, sizeof err_path, "%s/.stderr", tu_scratch);
    run_result r = {-1, NULL, 0, NULL};
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fi = open("/dev/null", O_RDONLY);
        if (fo < 0 || fe < 0 || fi < 0) _exit(126);
        dup2(fi, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        execv(LOOM_CLI_PATH, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    if (pid > 0) {
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
    }
    r.out = slurp(out_path, &r.out_len);
    r.err = slurp(err_path, NULL);
    return r;
}

static inline void run_free(run_result *r) {
    free(r->out);
    free(r->err);
}

static inline int has(const char *s, const char *part) { return s && strstr(s, part) != NULL; }

// Some line of `s` starts with `prefix`.
static inline int has_line_starting(const char *s, const char *prefix) {
    size_t n = strlen(prefix);
    for (const char *p = s; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, prefix, n) == 0) return 1;
    return 0;
}

#define CHECK_RUN(r, want_code, what)                                                        \
    CHECK_MSG((r).code == (want_code), "%s: exit %d, expected %d\nstdout: %s\nstderr: %s",    \
              what, (r).code, want_code, (r).out, (r).err)

#endif // LOOM_TEST_CLI_TESTUTIL_H
