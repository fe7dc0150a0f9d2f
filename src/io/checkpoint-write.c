// Checkpoint writer: one safetensors shard per rank (slices, their places in the global tensors
// and their CRC-32s in the metadata), then checkpoint.json from rank 0 once all are written.

#include "loom/checkpoint.h"

#include "core/core.h"
#include "io/checkpoint-common.h"
#include "io/fileio.h"
#include "io/safetensors-common.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

void loom__ckpt_shard_name(char *buf, size_t cap, int rank, int world) {
    snprintf(buf, cap, "shard-%05d-of-%05d.safetensors", rank, world);
}

static json_t *dims_json(int ndim, const int64_t *dims) {
    json_t *a = json_array();
    for (int d = 0; a && d < ndim; d++) json_array_append_new(a, json_integer(dims[d]));
    return a;
}

// Check slice t of rank `rank` and compute its number of bytes.
static loom_status check_slice(int rank, const loom_shard_tensor *t, size_t *nbytes) {
    const char *name = t->name ? t->name : "(null)";
    if (!t->name || !*t->name || !strcmp(t->name, LOOM_ST_METADATA_KEY))
        return loom__error(LOOM_ERR_INVALID, "checkpoint shard of rank %d: empty or reserved "
                           "tensor name '%s'", rank, name);
    if (t->ndim < 0 || t->ndim > LOOM_MAX_DIMS)
        return loom__error(LOOM_ERR_INVALID, "checkpoint shard of rank %d: tensor '%s' has %d "
                           "dims (0 to %d allowed)", rank, name, t->ndim, LOOM_MAX_DIMS);
    uint64_t bytes, global_bytes;
    if (loom__st_nbytes(t->ndim, t->global_shape, LOOM_DTYPE_F32, &global_bytes) ||
        loom__st_nbytes(t->ndim, t->shape, LOOM_DTYPE_F32, &bytes))
        return loom__error(LOOM_ERR_INVALID, "checkpoint shard of rank %d: tensor '%s' has a "
                           "negative or huge dimension", rank, name);
    for (int d = 0; d < t->ndim; d++) {
        if (t->offset[d] < 0 || t->offset[d] > t->global_shape[d] - t->shape[d]) {
            char off[128], shape[128], global[128];
            return loom__error(LOOM_ERR_SHAPE, "checkpoint shard of rank %d: slice of tensor '%s' "
                               "at offset %s of shape %s lies outside its global shape %s (dim "
                               "%d)", rank, name,
                               loom__st_format_shape(off, sizeof off, t->ndim, t->offset),
                               loom__st_format_shape(shape, sizeof shape, t->ndim, t->shape),
                               loom__st_format_shape(global, sizeof global, t->ndim,
                                                     t->global_shape), d);
        }
    }
    if (bytes > 0 && !t->data)
        return loom__error(LOOM_ERR_INVALID, "checkpoint shard of rank %d: tensor '%s' has NULL "
                           "data", rank, name);
    *nbytes = (size_t)bytes;
    return LOOM_OK;
}

// Record slice t in the "loom.slices" and "loom.crc32" objects; names must be unique.
static loom_status describe_slice(int rank, const loom_shard_tensor *t, size_t nbytes,
                                  json_t *slices, json_t *crcs) {
    if (json_object_get(slices, t->name))
        return loom__error(LOOM_ERR_INVALID, "checkpoint shard of rank %d: tensor '%s' is given "
                           "twice", rank, t->name);
    json_t *slice = json_pack("{s:o, s:o}", "global_shape", dims_json(t->ndim, t->global_shape),
                              "offset", dims_json(t->ndim, t->offset));
    json_t *crc = json_integer((json_int_t)loom__ckpt_crc32(t->data, nbytes));
    if (!slice || !crc || json_object_set_new(slices, t->name, slice) ||
        json_object_set_new(crcs, t->name, crc))
        return loom__error(LOOM_ERR_INVALID, "checkpoint shard of rank %d: tensor name '%s' is "
                           "not valid UTF-8 (or memory ran out)", rank, t->name);
    return LOOM_OK;
}

// The text must parse as JSON; NULL is fine (the key is left out).
static loom_status check_json_text(const char *text, const char *field) {
    if (!text) return LOOM_OK;
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!v)
        return loom__error(LOOM_ERR_INVALID, "loom_shard_info.%s is not valid JSON: %s (line %d, "
                           "column %d)", field, jerr.text, jerr.line, jerr.column);
    json_decref(v);
    return LOOM_OK;
}

static loom_status check_info(const char *dir, const loom_shard_info *info, int n,
                              const loom_shard_tensor *tensors) {
    if (!dir || !*dir || !info || n < 0 || (n > 0 && !tensors))
        return loom__error(LOOM_ERR_INVALID, "loom_checkpoint_write_shard: no directory, no info "
                           "or a bad tensor list (n = %d)", n);
    if (info->world < 1 || info->rank < 0 || info->rank >= info->world || info->step < 0)
        return loom__error(LOOM_ERR_INVALID, "loom_checkpoint_write_shard: rank %d of world %d "
                           "at step %lld (need 0 <= rank < world, step >= 0)", info->rank,
                           info->world, (long long)info->step);
    LOOM_CHECK(check_json_text(info->config_json, "config_json"));
    return check_json_text(info->extra_json, "extra_json");
}

loom_status loom_checkpoint_write_shard(const char *dir, const loom_shard_info *info, int n,
                                        const loom_shard_tensor *tensors) {
    LOOM_CHECK(check_info(dir, info, n, tensors));
    json_t *slices = json_object(), *crcs = json_object();
    loom_named_tensor *named = loom__calloc((size_t)n, sizeof *named);
    char *slices_text = NULL, *crcs_text = NULL, *path = NULL;
    loom_status st = slices && crcs && named ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int i = 0; i < n && st >= 0; i++) {
        const loom_shard_tensor *t = &tensors[i];
        size_t nbytes = 0;
        st = check_slice(info->rank, t, &nbytes);
        if (st >= 0) st = describe_slice(info->rank, t, nbytes, slices, crcs);
        named[i] = (loom_named_tensor){t->name, LOOM_DTYPE_F32, t->ndim, {0}, t->data};
        if (t->ndim >= 0 && t->ndim <= LOOM_MAX_DIMS)
            memcpy(named[i].shape, t->shape, (size_t)t->ndim * sizeof *t->shape);
    }
    if (st < 0) goto done;
    slices_text = json_dumps(slices, JSON_COMPACT | JSON_SORT_KEYS);
    crcs_text = json_dumps(crcs, JSON_COMPACT | JSON_SORT_KEYS);
    char rank[24], world[24], step[24], name[64];
    snprintf(rank, sizeof rank, "%d", info->rank);
    snprintf(world, sizeof world, "%d", info->world);
    snprintf(step, sizeof step, "%lld", (long long)info->step);
    loom__ckpt_shard_name(name, sizeof name, info->rank, info->world);
    path = loom__path_join(dir, name);
    if (!slices_text || !crcs_text || !path) {
        st = loom__error(LOOM_ERR_NOMEM, "writing checkpoint shard '%s': out of memory", name);
        goto done;
    }
    const char *meta[16] = {
        LOOM_CKPT_KEY_FORMAT, LOOM_CKPT_SHARD_FORMAT, LOOM_CKPT_KEY_RANK, rank,
        LOOM_CKPT_KEY_WORLD, world, LOOM_CKPT_KEY_STEP, step,
        LOOM_CKPT_KEY_SLICES, slices_text, LOOM_CKPT_KEY_CRC32, crcs_text,
    };
    int n_meta = 6;
    const char *const optional[2][2] = {{LOOM_CKPT_KEY_CONFIG, info->config_json},
                                        {LOOM_CKPT_KEY_EXTRA, info->extra_json}};
    for (int k = 0; k < 2; k++) {
        if (!optional[k][1]) continue;
        meta[2 * n_meta] = optional[k][0];
        meta[2 * n_meta + 1] = optional[k][1];
        n_meta++;
    }
    LOOM_CHECK_GOTO(loom__ensure_dir(dir), st, done);
    LOOM_CHECK_GOTO(loom__remove_stale(dir, LOOM_CKPT_INDEX_NAME), st, done);
    st = loom_safetensors_write(path, n, named, n_meta, meta);
done:
    free(slices_text);
    free(crcs_text);
    loom__free(path);
    loom__free(named);
    json_decref(slices);
    json_decref(crcs);
    return st;
}

// checkpoint.json: indented, keys in a fixed order, final newline; written atomically.
static loom_status write_index(const char *dir, int world, int64_t step,
                               const char *const *names) {
    json_t *shards = json_array();
    for (int r = 0; shards && r < world; r++) json_array_append_new(shards, json_string(names[r]));
    json_t *root = json_pack("{s:s, s:i, s:I, s:o}", "format", LOOM_CKPT_FORMAT, "world", world,
                             "step", (json_int_t)step, "shards", shards);
    char *path = loom__path_join(dir, LOOM_CKPT_INDEX_NAME);
    loom_status st = path && root ? loom__write_json_atomic(path, root, JSON_INDENT(2) | JSON_PRESERVE_ORDER)
                                  : loom__error(LOOM_ERR_NOMEM, "committing checkpoint '%s': out of memory", dir);
    json_decref(root);
    loom__free(path);
    return st;
}

loom_status loom_checkpoint_commit(const char *dir, int world, int64_t step) {
    if (!dir || !*dir || world < 1 || step < 0)
        return loom__error(LOOM_ERR_INVALID, "loom_checkpoint_commit: need a directory, world "
                           ">= 1 and step >= 0 (got world %d, step %lld)", world,
                           (long long)step);
    enum { NAME_CAP = 64 };
    char *storage = loom__malloc((size_t)world * NAME_CAP);
    const char **names = loom__malloc((size_t)world * sizeof *names);
    loom_checkpoint_t c = NULL;
    loom_status st = storage && names ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int r = 0; r < world && st >= 0; r++) {
        names[r] = storage + (size_t)r * NAME_CAP;
        loom__ckpt_shard_name(storage + (size_t)r * NAME_CAP, NAME_CAP, r, world);
    }
    if (st >= 0) {
        st = loom__ckpt_open_shards(dir, world, step, names, &c);
        if (st < 0) loom__error_prefix("cannot commit");
    }
    loom_checkpoint_close(c);
    if (st >= 0) st = write_index(dir, world, step, names);
    loom__free(names);
    loom__free(storage);
    return st;
}
