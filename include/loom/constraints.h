// Partition constraints: the nnScaler/AutoDist YAML file that limits how the planner may split
// (or replicate) chosen ops, read unchanged, and the lookup of the constraints that apply to an op.

#ifndef LOOM_CONSTRAINTS_H
#define LOOM_CONSTRAINTS_H

#include "loom/status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// The file is a YAML sequence of mappings, one per constraint:
//
//   - name: loom.linear               # op signature, required
//     parent_module: h.3.attn         # optional; suffix of the op's module path on dots
//     allowed_partition_dims:         # optional; "input,dim" strings or [input, dim] lists;
//     - 0,0                           #   [] allows no partition, absent allows any
//     replica_allowed: false          # optional, default true
//
// Any other key is an error. Scalars are typed by YAML's plain/quoted style (tags are ignored):
// replica_allowed takes the plain booleans PyYAML reads (true/false, yes/no, on/off in lower,
// Title or UPPER case); [input, dim] elements must be plain decimal integers. Aliases to
// anchored nodes are followed. An empty file, a null document and [] all hold no constraints.

// Accepted ranges of one allowed partition. Dims may be negative (counted from the last dim,
// as in PyTorch); they are stored as written and checked against the op by the planner.
#define LOOM_CONSTRAINT_MAX_INPUT 255
#define LOOM_CONSTRAINT_MIN_DIM (-8)
#define LOOM_CONSTRAINT_MAX_DIM 7

// Split input tensor `input` (0-based among the op's inputs) along its dim `dim`.
typedef struct loom_partition_dim {
    int input;
    int dim;
} loom_partition_dim;

// One entry of the file. Strings and arrays are borrowed from the loom_constraints_t.
typedef struct loom_partition_constraint {
    const char *name;               // op signature, matched exactly ("loom.linear")
    const char *parent_module;      // module-path suffix; NULL: any module (key absent, null, "")
    int n_allowed;                  // -1: key absent (any partition); 0: [] (none allowed)
    const loom_partition_dim *allowed;  // n_allowed entries in file order; NULL if n_allowed <= 0
    int replica_allowed;            // 1 (the default) or 0
    int line;                       // position of the entry in the file, 1-based
    int column;
} loom_partition_constraint;

// A parsed constraint file; immutable, so it may be read from several threads at once.
typedef struct loom_constraints *loom_constraints_t;

// Read and parse the constraint file at `path`. Errors: LOOM_ERR_IO (cannot open or read; names
// the path and strerror), LOOM_ERR_FORMAT (malformed YAML or a bad entry; the message names the
// file, "line L, column C" and the problem), LOOM_ERR_NOMEM. *out is NULL on error.
loom_status loom_constraints_load(const char *path, loom_constraints_t *out);
// Parse `len` bytes of YAML text (need not be NUL-terminated; NULL with len 0 is an empty file).
// `source_name` (NULL: "<string>") stands for the file in error messages. Errors as above.
loom_status loom_constraints_parse(const char *text, size_t len, const char *source_name,
                                   loom_constraints_t *out);
// A constraint set made in code: copies of the `n` entries (strings and allowed dims copied; line
// and column kept as given, 0 when made up). Errors: LOOM_ERR_INVALID for an entry without a name
// or with allowed dims but n_allowed < 0; LOOM_ERR_NOMEM. Several sets combine by passing the
// entries of each (loom_constraints_at) to one call.
loom_status loom_constraints_create(const loom_partition_constraint *items, int n,
                                    loom_constraints_t *out);
// Number of constraints (0 for NULL).
int loom_constraints_count(loom_constraints_t c);
// Constraint `i` in file order, or NULL when `i` is out of range.
const loom_partition_constraint *loom_constraints_at(loom_constraints_t c, int i);
// Free everything. NULL is fine.
void loom_constraints_free(loom_constraints_t c);

// 1 if `pattern` names `module_path` or a suffix of it that starts after a dot: "attn" and
// "3.attn" match "h.3.attn", "3.attn" does not match "h.13.attn". A NULL or empty pattern
// matches every path; a NULL path is the root module "".
int loom_module_matches(const char *module_path, const char *pattern);
// The constraints for an op: `name` equal to `signature` and parent_module matching
// `module_path`. Writes the first min(count, cap) indices, in file order, to `idx` (may be NULL
// when cap is 0) and returns the total count, which may exceed `cap`.
int loom_constraints_find(loom_constraints_t c, const char *signature, const char *module_path,
                          int *idx, int cap);

#ifdef __cplusplus
}
#endif
#endif // LOOM_CONSTRAINTS_H
