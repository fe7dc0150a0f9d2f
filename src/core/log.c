// Leveled logging to stderr, filtered by the LOOM_LOG environment variable.

#include "core/core.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int log_threshold(void) {
    static int threshold = -1;
    if (threshold < 0) {
        const char *env = getenv("LOOM_LOG");
        threshold = LOOM_LOG_WARN;
        if (env) {
            if (!strcmp(env, "debug")) threshold = LOOM_LOG_DEBUG;
            else if (!strcmp(env, "info")) threshold = LOOM_LOG_INFO;
            else if (!strcmp(env, "error")) threshold = LOOM_LOG_ERROR;
        }
    }
    return threshold;
}

void loom__log(enum loom_log_level level, const char *fmt, ...) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    if ((int)level < log_threshold()) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loom %s: ", names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
