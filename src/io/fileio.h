// Internal file helpers of the io box: read-only file mapping, atomic writes (temp file, fsync,
// rename, directory fsync), and small path utilities. Errors name the path and strerror.

#ifndef LOOM_IO_FILEIO_H
#define LOOM_IO_FILEIO_H

#include "loom/status.h"

#include <stdint.h>
#include <stdio.h>

// A whole file mapped read-only. An empty file maps to data == NULL, size == 0.
typedef struct loom__mapped_file {
    const uint8_t *data;
    size_t size;
} loom__mapped_file;

// Map `path` read-only. Errors: LOOM_ERR_NOT_FOUND when it does not exist, LOOM_ERR_IO for
// other open/stat/mmap failures and for directories. `what` ("token file") starts the message.
loom_status loom__map_file(const char *path, const char *what, loom__mapped_file *out);
// Unmap; a zeroed or already unmapped struct is fine.
void loom__unmap_file(loom__mapped_file *m);

// A file being written to "<path>.tmp.<pid>", renamed over `path` on commit.
typedef struct loom__atomic_file {
    FILE *f;
    char *path;
    char *tmp_path;
} loom__atomic_file;

// Create the temp file. On failure nothing is left behind (LOOM_ERR_IO / LOOM_ERR_NOMEM).
loom_status loom__atomic_open(loom__atomic_file *af, const char *path);
// Append bytes; on failure the caller must still call loom__atomic_abort.
loom_status loom__atomic_write(loom__atomic_file *af, const void *data, size_t n);
// fflush + fsync + close + rename over the final path + fsync the directory. Always releases
// `af`; on failure the temp file is removed and LOOM_ERR_IO returned.
loom_status loom__atomic_commit(loom__atomic_file *af);
// Close and remove the temp file, release `af`. Safe on a zeroed or released struct.
void loom__atomic_abort(loom__atomic_file *af);
// Write one whole buffer to `path` atomically.
loom_status loom__write_file_atomic(const char *path, const void *data, size_t n);

// "dir/name" in a new loom__malloc'd string (NULL with LOOM_ERR_NOMEM recorded).
char *loom__path_join(const char *dir, const char *name);
// Write a JSON document (jansson dump flags) to path atomically, with a final newline.
struct json_t;
loom_status loom__write_json_atomic(const char *path, const struct json_t *root, size_t flags);
// Remove dir/name if it exists (a stale file); LOOM_ERR_IO naming it when it cannot be removed.
loom_status loom__remove_stale(const char *dir, const char *name);
// The directory part of `path` ("." when it has none), loom__malloc'd.
char *loom__path_dirname(const char *path);
// Create directory `dir` if missing (its parent must exist). LOOM_ERR_IO when it cannot be
// created or exists but is not a directory.
loom_status loom__ensure_dir(const char *dir);
// mkdir -p: `dir` and any missing parents (errors as loom__ensure_dir).
loom_status loom__mkdirs(const char *dir);
// 1 if `path` exists and is a regular file, 0 otherwise.
int loom__is_regular_file(const char *path);

#endif // LOOM_IO_FILEIO_H
