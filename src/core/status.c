// Status codes, their names, and the per-thread last-error message.

#include "core/core.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[2048];

const char *loom_status_str(loom_status st) {
    switch (st) {
#define LOOM_STATUS_STR_(name, value, text) case value: return text;
        LOOM_STATUS_MAP(LOOM_STATUS_STR_)
#undef LOOM_STATUS_STR_
    }
    return "unknown status";
}

const char *loom_status_name(loom_status st) {
    switch (st) {
#define LOOM_STATUS_NAME_(name, value, text) case value: return "LOOM_" #name;
        LOOM_STATUS_MAP(LOOM_STATUS_NAME_)
#undef LOOM_STATUS_NAME_
    }
    return "LOOM_UNKNOWN";
}

const char *loom_last_error(void) { return last_error; }

void loom_clear_error(void) { last_error[0] = '\0'; }

loom_status loom__error(loom_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

loom_status loom__error_prefix(const char *fmt, ...) {
    char rest[sizeof last_error];
    memcpy(rest, last_error, sizeof rest);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof last_error - 2) return 0;
    size_t used = (size_t)n;
    size_t room = sizeof last_error - used - 3;
    size_t len = strnlen(rest, room);
    memcpy(last_error + used, ": ", 2);
    memcpy(last_error + used + 2, rest, len);
    last_error[used + 2 + len] = '\0';
    return 0;
}

void loom__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "loom: internal invariant failed: %s (%s:%d)\n", expr, file, line);
    abort();
}
