// Safetensors writer: single files (header JSON padded with spaces to 8 bytes, then the data in
// the given order) and Hugging Face style sharded directories with an index. Writes are atomic.

#include "loom/safetensors.h"

#include "core/core.h"
#include "io/fileio.h"
#include "io/safetensors-common.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

// Check one tensor description and compute its byte size.
static loom_status check_tensor(const char *path, int i, const loom_named_tensor *t,
                                uint64_t *nbytes) {
    const char *name = t->name ? t->name : "(null)";
    if (!t->name || !*t->name || !strcmp(t->name, LOOM_ST_METADATA_KEY))
        return loom__error(LOOM_ERR_INVALID, "writing '%s': tensor %d has an empty or reserved "
                           "name '%s'", path, i, name);
    if ((int)t->dtype < 0 || t->dtype >= LOOM_DTYPE_COUNT)
        return loom__error(LOOM_ERR_INVALID, "writing '%s': tensor '%s' has invalid dtype %d",
                           path, name, (int)t->dtype);
    if (t->ndim < 0 || t->ndim > LOOM_MAX_DIMS || loom__st_nbytes(t->ndim, t->shape, t->dtype,
                                                                  nbytes))
        return loom__error(LOOM_ERR_INVALID, "writing '%s': tensor '%s' has an invalid shape "
                           "(ndim %d, negative or huge dimensions)", path, name, t->ndim);
    if (*nbytes > 0 && !t->data)
        return loom__error(LOOM_ERR_INVALID, "writing '%s': tensor '%s' has NULL data", path,
                           name);
    return LOOM_OK;
}

// Set root[key] = value (stolen); LOOM_ERR_INVALID on a duplicate key or invalid UTF-8.
static loom_status set_unique(json_t *root, const char *key, json_t *value, const char *path) {
    if (!value) return loom__error(LOOM_ERR_INVALID, "writing '%s': entry '%s' is not valid UTF-8 "
                                   "or memory ran out", path, key);
    if (json_object_get(root, key)) {
        json_decref(value);
        return loom__error(LOOM_ERR_INVALID, "writing '%s': duplicate tensor name '%s'", path,
                           key);
    }
    if (json_object_set_new(root, key, value))
        return loom__error(LOOM_ERR_INVALID, "writing '%s': name '%s' is not valid UTF-8", path,
                           key);
    return LOOM_OK;
}

static json_t *entry_json(const loom_named_tensor *t, uint64_t begin, uint64_t end) {
    json_t *shape = json_array();
    for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
    return json_pack("{s:s, s:o, s:[I, I]}", "dtype", loom_dtype_name(t->dtype), "shape", shape,
                     "data_offsets", (json_int_t)begin, (json_int_t)end);
}

static json_t *metadata_json(int n_meta, const char *const *meta_kv) {
    json_t *meta = json_object();
    for (int i = 0; meta && i < n_meta; i++) {
        if (!meta_kv[2 * i] || !meta_kv[2 * i + 1] ||
            json_object_set_new(meta, meta_kv[2 * i], json_string(meta_kv[2 * i + 1]))) {
            json_decref(meta);
            return NULL;
        }
    }
    return meta;
}

// The header JSON padded with spaces to a multiple of 8 bytes into *out (loom__malloc'd).
static loom_status build_header(const char *path, int n, const loom_named_tensor *tensors,
                                const uint64_t *nbytes, int n_meta, const char *const *meta_kv,
                                char **out, size_t *out_len) {
    loom_status st = LOOM_OK;
    json_t *root = json_object();
    if (!root) return loom__error(LOOM_ERR_NOMEM, "writing '%s': out of memory", path);
    if (n_meta > 0) {
        json_t *meta = metadata_json(n_meta, meta_kv);
        if (!meta) {
            json_decref(root);
            return loom__error(LOOM_ERR_INVALID, "writing '%s': metadata has a NULL or non-UTF-8 "
                               "key or value", path);
        }
        json_object_set_new(root, LOOM_ST_METADATA_KEY, meta);
    }
    uint64_t offset = 0;
    for (int i = 0; i < n && st >= 0; i++) {
        st = set_unique(root, tensors[i].name, entry_json(&tensors[i], offset, offset + nbytes[i]),
                        path);
        offset += nbytes[i];
    }
    char *text = st >= 0 ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    if (st < 0) return st;
    if (!text) return loom__error(LOOM_ERR_NOMEM, "writing '%s': cannot serialize header", path);
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    char *buf = loom__malloc(padded);
    if (buf) {
        memcpy(buf, text, len);
        memset(buf + len, ' ', padded - len);
    }
    free(text);
    if (!buf) return LOOM_ERR_NOMEM;
    *out = buf;
    *out_len = padded;
    return LOOM_OK;
}

// Validate all tensors; *nbytes_out gets a loom__malloc'd array of their sizes.
static loom_status check_all(const char *path, int n, const loom_named_tensor *tensors,
                             uint64_t **nbytes_out) {
    if (n < 0 || (n > 0 && !tensors))
        return loom__error(LOOM_ERR_INVALID, "writing '%s': bad tensor list (n = %d)", path, n);
    uint64_t *nbytes = loom__malloc((size_t)n * sizeof *nbytes);
    if (!nbytes) return LOOM_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        loom_status st = check_tensor(path, i, &tensors[i], &nbytes[i]);
        if (st < 0) {
            loom__free(nbytes);
            return st;
        }
    }
    *nbytes_out = nbytes;
    return LOOM_OK;
}

loom_status loom_safetensors_write(const char *path, int n, const loom_named_tensor *tensors,
                                   int n_meta, const char *const *meta_kv) {
    if (!path || !*path) return loom__error(LOOM_ERR_INVALID, "loom_safetensors_write: no path");
    if (n_meta < 0 || (n_meta > 0 && !meta_kv))
        return loom__error(LOOM_ERR_INVALID, "writing '%s': bad metadata list", path);
    uint64_t *nbytes = NULL;
    char *header = NULL;
    size_t header_len = 0;
    loom__atomic_file af = {0};
    loom_status st;
    LOOM_CHECK_GOTO(check_all(path, n, tensors, &nbytes), st, done);
    LOOM_CHECK_GOTO(build_header(path, n, tensors, nbytes, n_meta, meta_kv, &header, &header_len),
                    st, done);
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    LOOM_CHECK_GOTO(loom__atomic_open(&af, path), st, done);
    LOOM_CHECK_GOTO(loom__atomic_write(&af, len_le, sizeof len_le), st, done);
    LOOM_CHECK_GOTO(loom__atomic_write(&af, header, header_len), st, done);
    for (int i = 0; i < n; i++)
        LOOM_CHECK_GOTO(loom__atomic_write(&af, tensors[i].data, (size_t)nbytes[i]), st, done);
    st = loom__atomic_commit(&af);
done:
    loom__atomic_abort(&af);  // no-op after commit
    loom__free(header);
    loom__free(nbytes);
    return st;
}

// Write tensors [first, first + count) to dir/name with the {"format": "pt"} metadata.
static loom_status write_in_dir(const char *dir, const char *name, int count,
                                const loom_named_tensor *tensors) {
    static const char *const format_pt[] = {"format", "pt"};
    char *p = loom__path_join(dir, name);
    if (!p) return LOOM_ERR_NOMEM;
    loom_status st = loom_safetensors_write(p, count, tensors, 1, format_pt);
    loom__free(p);
    return st;
}

// The index JSON, indented by 2 with sorted keys and a final newline, written atomically.
static loom_status write_index(const char *dir, json_t *weight_map, uint64_t total) {
    char *path = loom__path_join(dir, LOOM_ST_INDEX_NAME);
    if (!path) return LOOM_ERR_NOMEM;
    json_t *root = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)total,
                             "weight_map", weight_map);
    loom_status st = loom__write_json_atomic(path, root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    loom__free(path);
    return st;
}

// Hugging Face shard file name: model-00001-of-00003.safetensors (shards count from 1).
static void shard_name(char *buf, size_t cap, int shard, int n_shards) {
    snprintf(buf, cap, "model-%05d-of-%05d.safetensors", shard, n_shards);
}

loom_status loom_safetensors_write_sharded(const char *dir, int n, const loom_named_tensor *tensors,
                                           size_t max_shard_bytes) {
    if (!dir || !*dir)
        return loom__error(LOOM_ERR_INVALID, "loom_safetensors_write_sharded: no directory");
    uint64_t *nbytes = NULL;
    int *shard_of = NULL;
    json_t *weight_map = NULL;
    loom_status st;
    LOOM_CHECK_GOTO(check_all(dir, n, tensors, &nbytes), st, done);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += nbytes[i];
    LOOM_CHECK_GOTO(loom__ensure_dir(dir), st, done);
    if (max_shard_bytes == 0 || total <= max_shard_bytes) {
        LOOM_CHECK_GOTO(write_in_dir(dir, LOOM_ST_SINGLE_NAME, n, tensors), st, done);
        st = loom__remove_stale(dir, LOOM_ST_INDEX_NAME);
        goto done;
    }
    // Plan: fill shards in order; a tensor that does not fit starts the next shard.
    shard_of = loom__malloc((size_t)n * sizeof *shard_of);
    weight_map = json_object();
    if (!shard_of || !weight_map) {
        st = LOOM_ERR_NOMEM;
        goto done;
    }
    int n_shards = 0;
    uint64_t fill = 0;
    for (int i = 0; i < n; i++) {
        if (n_shards == 0 || (fill > 0 && fill + nbytes[i] > max_shard_bytes)) {
            n_shards++;
            fill = 0;
        }
        fill += nbytes[i];
        shard_of[i] = n_shards;
    }
    // Name every tensor's shard first so a duplicate name fails before anything is written.
    char name[64];
    for (int i = 0; i < n; i++) {
        shard_name(name, sizeof name, shard_of[i], n_shards);
        LOOM_CHECK_GOTO(set_unique(weight_map, tensors[i].name, json_string(name), dir), st,
                        done);
    }
    for (int first = 0; first < n;) {
        int last = first;
        while (last < n && shard_of[last] == shard_of[first]) last++;
        shard_name(name, sizeof name, shard_of[first], n_shards);
        LOOM_CHECK_GOTO(write_in_dir(dir, name, last - first, tensors + first), st, done);
        first = last;
    }
    LOOM_CHECK_GOTO(write_index(dir, weight_map, total), st, done);
    st = loom__remove_stale(dir, LOOM_ST_SINGLE_NAME);
done:
    json_decref(weight_map);
    loom__free(shard_of);
    loom__free(nbytes);
    return st;
}
