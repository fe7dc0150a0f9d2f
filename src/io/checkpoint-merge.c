// Checkpoint merger: assembles every global tensor in full from its slices (checksums checked,
// replicas compared) and writes a Hugging Face style directory that loom_checkpoint_open reads.

#include "loom/checkpoint.h"

#include "core/core.h"
#include "io/checkpoint-common.h"
#include "io/fileio.h"
#include "io/safetensors-common.h"

#include <jansson.h>
#include <string.h>

typedef const char *(*file_name_fn_t)(const char *name, char *buf, size_t cap);

enum { NAME_CAP = 1024 };

static bool is_optimizer_state(const char *name) {
    return !strncmp(name, LOOM_CKPT_OPTIM_PREFIX, strlen(LOOM_CKPT_OPTIM_PREFIX));
}

// The file name of tensor `name` (*out, possibly in buf): fn(name), or for
// "optim.<slot>.<param>" the name "optim.<slot>." + fn(<param>).
static loom_status file_name_of(const char *name, file_name_fn_t fn, char *buf, size_t cap,
                                const char **out) {
    *out = name;
    if (!fn) return LOOM_OK;
    size_t keep = 0;
    const char *slot_end = is_optimizer_state(name) ?
        strchr(name + strlen(LOOM_CKPT_OPTIM_PREFIX), '.') : NULL;
    if (slot_end) keep = (size_t)(slot_end + 1 - name);
    char mapped_buf[NAME_CAP];
    const char *mapped = fn(name + keep, mapped_buf, sizeof mapped_buf);
    if (!mapped || !*mapped)
        return loom__error(LOOM_ERR_INVALID, "merging checkpoint: file_name_fn gave no name for "
                           "'%s'", name + keep);
    int len = snprintf(buf, cap, "%.*s%s", (int)keep, name, mapped);
    if (len < 0 || (size_t)len >= cap)
        return loom__error(LOOM_ERR_INVALID, "merging checkpoint: file name of '%s' is longer "
                           "than %zu bytes", name, cap - 1);
    *out = buf;
    return LOOM_OK;
}

// ---- replicas --------------------------------------------------------------------------------

typedef struct compare_ctx {
    const float *full, *piece;
    int64_t full_index;  // first differing element, in the full tensor
    float full_value, piece_value;
} compare_ctx;

static int compare_run(void *ctx, int64_t full_index, int64_t piece_index, int64_t n) {
    compare_ctx *cc = ctx;
    const float *a = cc->full + full_index, *b = cc->piece + piece_index;
    if (!memcmp(a, b, (size_t)n * sizeof *a)) return 0;
    int64_t k = 0;
    while (!memcmp(a + k, b + k, sizeof *a)) k++;
    cc->full_index = full_index + k;
    cc->full_value = a[k];
    cc->piece_value = b[k];
    return 1;
}

static bool box_contains(const ckpt_box *b, int ndim, const int64_t *at) {
    for (int d = 0; d < ndim; d++)
        if (at[d] < b->lo[d] || at[d] >= b->hi[d]) return false;
    return true;
}

static loom_status replica_error(loom_checkpoint_t c, const ckpt_tensor *t, int disagreeing,
                                 const compare_ctx *cc) {
    int64_t at[LOOM_MAX_DIMS], rest = cc->full_index;
    for (int d = t->ndim - 1; d >= 0; d--) {
        at[d] = rest % t->global_shape[d];
        rest /= t->global_shape[d];
    }
    int owner = 0;  // the lowest-rank piece holding the element: the one the value came from
    while (!box_contains(&t->pieces[owner].box, t->ndim, at)) owner++;
    char where[128];
    return loom__error(LOOM_ERR_FORMAT, "checkpoint '%s': replicas of tensor '%s' disagree at "
                       "element %s: %.9g in '%s' but %.9g in '%s'", c->dir, t->name,
                       loom__st_format_shape(where, sizeof where, t->ndim, at),
                       (double)cc->full_value,
                       loom_weights_path(c->sources[t->pieces[owner].source]),
                       (double)cc->piece_value,
                       loom_weights_path(c->sources[t->pieces[disagreeing].source]));
}

// Every piece that overlaps a lower-rank one must hold the same bits as the assembled tensor
// (which took each element from its lowest-rank piece). Loading a piece checks its checksum.
static loom_status check_replicas(loom_checkpoint_t c, ckpt_tensor *t, const ckpt_box *whole,
                                  const float *full) {
    for (int i = 1; i < t->n_pieces; i++) {
        ckpt_piece *p = &t->pieces[i];
        bool overlaps = false;
        for (int j = 0; j < i && !overlaps; j++) {
            ckpt_box common;
            overlaps = loom__ckpt_box_intersect(&p->box, &t->pieces[j].box, t->ndim, &common);
        }
        if (!overlaps) continue;
        float *data;
        LOOM_CHECK(loom__ckpt_load_piece(c, t, p, &data));
        compare_ctx cc = {.full = full, .piece = data};
        int differs = loom__ckpt_for_each_run(&p->box, t->ndim, whole, &p->box, compare_run, &cc);
        loom__free(data);
        if (differs) return replica_error(c, t, i, &cc);
    }
    return LOOM_OK;
}

// ---- writing ---------------------------------------------------------------------------------

// Tensor t in full into a new loom__malloc'd array.
static loom_status assemble_full(loom_checkpoint_t c, ckpt_tensor *t, float **out) {
    ckpt_box whole = {{0}, {0}};
    memcpy(whole.hi, t->global_shape, sizeof whole.hi);
    float *full = loom__malloc((size_t)loom__ckpt_box_volume(&whole, t->ndim) * sizeof *full);
    if (!full) return LOOM_ERR_NOMEM;
    loom_status st = loom__ckpt_assemble(c, t, &whole, full);
    if (st >= 0) st = check_replicas(c, t, &whole, full);
    if (st < 0) {
        loom__free(full);
        return st;
    }
    *out = full;
    return LOOM_OK;
}

static loom_status write_optimizer(loom_checkpoint_t c, const char *out_dir, int n,
                                   const loom_named_tensor *tensors, const json_t *renamed) {
    char step[24];
    snprintf(step, sizeof step, "%lld", (long long)c->step);
    char *names = json_object_size(renamed) ? json_dumps(renamed, JSON_COMPACT | JSON_SORT_KEYS)
                                            : NULL;
    char *path = loom__path_join(out_dir, LOOM_CKPT_OPTIMIZER_NAME);
    const char *meta[8] = {"format", "pt", LOOM_CKPT_KEY_MERGED_STEP, step};
    int n_meta = 2;
    const char *const optional[2][2] = {{LOOM_CKPT_KEY_NAMES, names},
                                        {LOOM_CKPT_KEY_EXTRA, c->extra_json}};
    for (int k = 0; k < 2; k++) {
        if (!optional[k][1]) continue;
        meta[2 * n_meta] = optional[k][0];
        meta[2 * n_meta + 1] = optional[k][1];
        n_meta++;
    }
    loom_status st = LOOM_ERR_NOMEM;
    if (path && (names || !json_object_size(renamed)))
        st = loom_safetensors_write(path, n, tensors, n_meta, meta);
    free(names);
    loom__free(path);
    return st;
}

// Assemble the model tensors (optimizer == false) or the "optim.*" ones in full and write them:
// model.safetensors or optimizer.safetensors. `renamed` collects {file name: loom name}.
static loom_status write_group(loom_checkpoint_t c, const char *out_dir, bool optimizer,
                               file_name_fn_t fn, json_t *renamed) {
    int n = 0;
    for (int i = 0; i < c->n_tensors; i++) n += is_optimizer_state(c->tensors[i].name) == optimizer;
    loom_named_tensor *tensors = loom__calloc((size_t)n, sizeof *tensors);
    if (!tensors) return LOOM_ERR_NOMEM;
    loom_status st = LOOM_OK;
    int k = 0;
    for (int i = 0; i < c->n_tensors && st >= 0; i++) {
        ckpt_tensor *t = &c->tensors[i];
        if (is_optimizer_state(t->name) != optimizer) continue;
        char buf[NAME_CAP];
        const char *file_name;
        float *full;
        LOOM_CHECK_GOTO(file_name_of(t->name, fn, buf, sizeof buf, &file_name), st, done);
        if (strcmp(file_name, t->name) &&
            json_object_set_new(renamed, file_name, json_string(t->name))) {
            st = loom__error(LOOM_ERR_INVALID, "merging checkpoint '%s': file name '%s' is not "
                             "valid UTF-8", c->dir, file_name);
            goto done;
        }
        char *name_copy = loom__strdup(file_name);
        if (!name_copy) {
            st = LOOM_ERR_NOMEM;
            goto done;
        }
        tensors[k] = (loom_named_tensor){name_copy, LOOM_DTYPE_F32, t->ndim, {0}, NULL};
        memcpy(tensors[k].shape, t->global_shape, sizeof t->global_shape);
        k++;  // from here on the cleanup frees the name (and the data once set)
        LOOM_CHECK_GOTO(assemble_full(c, t, &full), st, done);
        tensors[k - 1].data = full;
    }
    if (optimizer)
        st = write_optimizer(c, out_dir, n, tensors, renamed);
    else
        st = loom_safetensors_write_sharded(out_dir, n, tensors, 0);
done:
    for (int i = 0; i < k; i++) {
        loom__free((void *)tensors[i].name);
        loom__free((void *)tensors[i].data);
    }
    loom__free(tensors);
    return st;
}

static loom_status write_config(const char *out_dir, const char *text) {
    char *path = loom__path_join(out_dir, LOOM_CKPT_CONFIG_NAME);
    if (!path) return LOOM_ERR_NOMEM;
    loom_status st = loom__write_file_atomic(path, text, strlen(text));
    loom__free(path);
    return st;
}

loom_status loom_checkpoint_merge(const char *shard_dir, const char *out_dir,
                                  file_name_fn_t file_name_fn) {
    if (!shard_dir || !*shard_dir || !out_dir || !*out_dir)
        return loom__error(LOOM_ERR_INVALID, "loom_checkpoint_merge: empty directory name");
    loom_checkpoint_t c;
    LOOM_CHECK(loom_checkpoint_open(shard_dir, &c));
    json_t *renamed = json_object();
    loom_status st = renamed ? LOOM_OK : LOOM_ERR_NOMEM;
    if (st >= 0) st = loom__ensure_dir(out_dir);
    if (st >= 0 && c->config_json) st = write_config(out_dir, c->config_json);
    if (st >= 0) st = write_group(c, out_dir, false, file_name_fn, renamed);
    if (st >= 0) st = write_group(c, out_dir, true, file_name_fn, renamed);
    json_decref(renamed);
    loom_checkpoint_close(c);
    return st;
}
