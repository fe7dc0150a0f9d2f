// loom status codes and error messages: every fallible call returns a loom_status.
// 0 is success, negative values are errors; loom_last_error() gives the detailed message.

#ifndef LOOM_STATUS_H
#define LOOM_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

// X-macro table: one place defines the codes, their names and their short descriptions.
#define LOOM_STATUS_MAP(XX)                                              \
    XX(OK, 0, "success")                                                 \
    XX(ERR_INVALID, -1, "invalid argument")                              \
    XX(ERR_NOMEM, -2, "out of memory")                                   \
    XX(ERR_IO, -3, "input/output error")                                 \
    XX(ERR_FORMAT, -4, "malformed file or text")                         \
    XX(ERR_SHAPE, -5, "shape mismatch")                                  \
    XX(ERR_NOT_FOUND, -6, "not found")                                   \
    XX(ERR_UNSUPPORTED, -7, "unsupported")                               \
    XX(ERR_BACKEND, -8, "backend failure")                               \
    XX(ERR_COMM, -9, "communication failure")                            \
    XX(ERR_INTERNAL, -10, "internal error")

typedef enum loom_status_code {
#define LOOM_STATUS_ENUM_(name, value, text) LOOM_##name = value,
    LOOM_STATUS_MAP(LOOM_STATUS_ENUM_)
#undef LOOM_STATUS_ENUM_
} loom_status_code;

typedef int loom_status;

// Short, static description of a status code ("invalid argument").
const char *loom_status_str(loom_status st);
// Name of a status code ("LOOM_ERR_INVALID").
const char *loom_status_name(loom_status st);

// The detailed message of the last error raised on the calling thread (names the file, the
// field and the fix where it can). Borrowed; valid until the next failing loom call on this
// thread. Empty string when no error has been raised.
const char *loom_last_error(void);
// Forget the calling thread's last error.
void loom_clear_error(void);

#ifdef __cplusplus
}
#endif
#endif // LOOM_STATUS_H
