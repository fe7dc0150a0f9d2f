// Leveled logging to stderr, filtered by the LOOM_LOG environment variable.

#include "core/core.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int threshold = LOOM_LOG_WARN;
static pthread_once_t threshold_once = PTHREAD_ONCE_INIT;

// Read LOOM_LOG once (rank threads log concurrently).
static void read_threshold(void) {
    const char *env = getenv("LOOM_LOG");
    if (!env) return;
    if (!strcmp(env, "debug")) threshold = LOOM_LOG_DEBUG;
    else if (!strcmp(env, "info")) threshold = LOOM_LOG_INFO;
    else if (!strcmp(env, "error")) threshold = LOOM_LOG_ERROR;
}

static int log_threshold(void) {
    pthread_once(&threshold_once, read_threshold);
    return threshold;
}

// Muted sections of this thread (nested): warnings of planning what is only estimated.
static _Thread_local int muted;

void loom__log_mute(int on) { muted += on ? 1 : -1; }

void loom__log(enum loom_log_level level, const char *fmt, ...) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    if ((int)level < log_threshold() || (muted > 0 && level < LOOM_LOG_ERROR)) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loom %s: ", names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
