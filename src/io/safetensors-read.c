// Safetensors reader: maps single files and sharded sets, validates every header in full, and
// copies tensors out as fp32 or int32 with exact conversions.

#include "loom/safetensors.h"

#include "core/core.h"
#include "io/fileio.h"
#include "io/halfconv.h"
#include "io/safetensors-common.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

typedef struct st_file {
    char *path;
    loom__mapped_file map;
    json_t *metadata;  // the "__metadata__" object, or NULL
} st_file;

typedef struct st_tensor {
    char *name;
    loom_dtype dtype;
    int ndim;
    int64_t shape[LOOM_MAX_DIMS];
    int file;       // index into loom_weights.files
    size_t offset;  // absolute byte offset into the file's mapping
    size_t nbytes;
} st_tensor;

struct loom_weights {
    char *path;
    st_file *files;
    int n_files, cap_files;
    st_tensor *tensors;  // sorted by name once open succeeds
    int n_tensors, cap_tensors;
};

// Safetensors dtypes that exist in the format but that loom does not read.
static const char *const unsupported_dtypes[] = {
    "F64", "I8", "U8", "I16", "U32", "U64", "BOOL", "C64",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",
};

static uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

// Grow *items (of `size`-byte elements) so one more fits.
static loom_status grow(void **items, int *cap, int count, size_t size) {
    if (count < *cap) return LOOM_OK;
    int new_cap = *cap ? *cap * 2 : 16;
    void *p = loom__realloc(*items, (size_t)new_cap * size);
    if (!p) return LOOM_ERR_NOMEM;
    *items = p;
    *cap = new_cap;
    return LOOM_OK;
}

static loom_status parse_dtype(const char *s, const char *tensor, const char *file,
                               loom_dtype *out) {
    for (int t = 0; t < LOOM_DTYPE_COUNT; t++) {
        if (!strcmp(s, loom_dtype_name((loom_dtype)t))) {
            *out = (loom_dtype)t;
            return LOOM_OK;
        }
    }
    for (size_t i = 0; i < sizeof unsupported_dtypes / sizeof *unsupported_dtypes; i++)
        if (!strcmp(s, unsupported_dtypes[i]))
            return loom__error(LOOM_ERR_UNSUPPORTED,
                               "unsupported dtype %s of tensor '%s' in file '%s': loom reads F32, "
                               "F16, BF16, I32, I64 and U16; convert the tensor (e.g. to F32) "
                               "before loading", s, tensor, file);
    return loom__error(LOOM_ERR_FORMAT,
                       "unknown dtype '%s' of tensor '%s' in file '%s' (not a safetensors dtype; "
                       "corrupt header?)", s, tensor, file);
}

// A JSON integer >= 0 into *out; 0 on success, -1 otherwise.
static int json_to_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

// Parse one header entry {"dtype": ..., "shape": [...], "data_offsets": [begin, end]} into *t
// (offsets relative to the data section, not yet absolute).
static loom_status parse_entry(const char *file, const char *name, const json_t *entry,
                               size_t data_size, st_tensor *t) {
    if (!json_is_object(entry))
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': entry of tensor '%s' is not "
                           "a JSON object", file, name);
    const json_t *dtype = json_object_get(entry, "dtype");
    const json_t *shape = json_object_get(entry, "shape");
    const json_t *offsets = json_object_get(entry, "data_offsets");
    const char *missing = !dtype ? "dtype" : !shape ? "shape" : !offsets ? "data_offsets" : NULL;
    if (missing)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': tensor '%s' has no \"%s\" "
                           "field", file, name, missing);
    if (!json_is_string(dtype))
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': \"dtype\" of tensor '%s' is "
                           "not a string", file, name);
    LOOM_CHECK(parse_dtype(json_string_value(dtype), name, file, &t->dtype));

    if (!json_is_array(shape) || json_array_size(shape) > LOOM_MAX_DIMS)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': \"shape\" of tensor '%s' must "
                           "be an array of at most %d non-negative integers", file, name,
                           LOOM_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d;
        if (json_to_u64(json_array_get(shape, (size_t)i), &d) || d > (uint64_t)INT64_MAX)
            return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': dimension %d of tensor "
                               "'%s' is not a non-negative integer", file, i, name);
        t->shape[i] = (int64_t)d;
    }
    uint64_t nbytes;
    if (loom__st_nbytes(t->ndim, t->shape, t->dtype, &nbytes))
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': tensor '%s' is absurdly "
                           "large", file, name);

    uint64_t begin, end;
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
        json_to_u64(json_array_get(offsets, 0), &begin) ||
        json_to_u64(json_array_get(offsets, 1), &end))
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': \"data_offsets\" of tensor "
                           "'%s' must be [begin, end] with non-negative integers", file, name);
    if (begin > end)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': tensor '%s' has data_offsets "
                           "[%llu, %llu] with begin > end", file, name,
                           (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': tensor '%s' has data_offsets "
                           "[%llu, %llu] beyond the %zu-byte data section (file truncated?)",
                           file, name, (unsigned long long)begin, (unsigned long long)end,
                           data_size);
    if (end - begin != nbytes) {
        char sh[128];
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': tensor '%s' (%s, shape %s) "
                           "needs %llu bytes but data_offsets [%llu, %llu] span %llu", file, name,
                           json_string_value(dtype),
                           loom__st_format_shape(sh, sizeof sh, t->ndim, t->shape),
                           (unsigned long long)nbytes, (unsigned long long)begin,
                           (unsigned long long)end, (unsigned long long)(end - begin));
    }
    t->offset = (size_t)begin;
    t->nbytes = (size_t)nbytes;
    return LOOM_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

// The tensors of one file must tile its data section exactly: no overlaps, holes or trailing
// bytes (the format forbids them). `t` holds offsets relative to the data section.
static loom_status check_tiling(const char *file, st_tensor *t, int n, size_t data_size) {
    if (n > 1) qsort(t, (size_t)n, sizeof *t, cmp_by_offset);
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        if (t[i].offset < pos)
            return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': tensors '%s' and '%s' "
                               "overlap in the data section", file, t[i - 1].name, t[i].name);
        if (t[i].offset > pos)
            return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': data bytes [%zu, %zu) "
                               "before tensor '%s' belong to no tensor", file, pos, t[i].offset,
                               t[i].name);
        pos = t[i].offset + t[i].nbytes;
    }
    if (pos != data_size)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': the data section has %zu "
                           "bytes but its tensors cover only %zu", file, data_size, pos);
    return LOOM_OK;
}

static loom_status parse_metadata(const char *file, json_t *meta, st_file *f) {
    const char *key;
    json_t *value;
    if (!json_is_object(meta))
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': \"%s\" is not a JSON object",
                           file, LOOM_ST_METADATA_KEY);
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': \"%s\" value of key '%s' "
                               "is not a string", file, LOOM_ST_METADATA_KEY, key);
    }
    f->metadata = json_incref(meta);
    return LOOM_OK;
}

// Parse the header's entries into w->tensors (tagged with file index `fi`).
static loom_status parse_header(loom_weights_t w, int fi, json_t *root, size_t data_start) {
    const char *path = w->files[fi].path;
    size_t data_size = w->files[fi].map.size - data_start;
    int first = w->n_tensors;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (!strcmp(key, LOOM_ST_METADATA_KEY)) {
            LOOM_CHECK(parse_metadata(path, value, &w->files[fi]));
            continue;
        }
        LOOM_CHECK(grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors, sizeof *w->tensors));
        st_tensor t = {0};
        LOOM_CHECK(parse_entry(path, key, value, data_size, &t));
        t.file = fi;
        if (!(t.name = loom__strdup(key))) return LOOM_ERR_NOMEM;
        w->tensors[w->n_tensors++] = t;
    }
    st_tensor *mine = w->n_tensors > first ? w->tensors + first : NULL;
    LOOM_CHECK(check_tiling(path, mine, w->n_tensors - first, data_size));
    for (int i = first; i < w->n_tensors; i++) w->tensors[i].offset += data_start;
    return LOOM_OK;
}

// Map one safetensors file, validate its header, append it and its tensors to `w`.
static loom_status add_file(loom_weights_t w, const char *path) {
    LOOM_CHECK(grow((void **)&w->files, &w->cap_files, w->n_files, sizeof *w->files));
    st_file *f = &w->files[w->n_files];
    memset(f, 0, sizeof *f);
    if (!(f->path = loom__strdup(path))) return LOOM_ERR_NOMEM;
    int fi = w->n_files++;  // from here on loom_weights_close releases it
    LOOM_CHECK(loom__map_file(path, "safetensors file", &f->map));

    size_t size = f->map.size;
    if (size < 8)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s' is %zu bytes long, too short "
                           "to hold the 8-byte header length (truncated or not safetensors?)",
                           path, size);
    uint64_t header_len = load_le64(f->map.data);
    if (header_len > LOOM_ST_MAX_HEADER_BYTES)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': header length %llu is absurd "
                           "(limit %llu bytes); not a safetensors file?", path,
                           (unsigned long long)header_len, LOOM_ST_MAX_HEADER_BYTES);
    if (header_len > size - 8)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': header length %llu exceeds "
                           "the %zu bytes after the length field (truncated or not safetensors?)",
                           path, (unsigned long long)header_len, size - 8);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->map.data + 8, (size_t)header_len,
                              JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': header is not valid JSON "
                           "(%s at byte %d); corrupt or not a safetensors file", path, jerr.text,
                           jerr.position);
    loom_status st = LOOM_OK;
    if (!json_is_object(root))
        st = loom__error(LOOM_ERR_FORMAT, "safetensors file '%s': header JSON is not an object",
                         path);
    else
        st = parse_header(w, fi, root, 8 + (size_t)header_len);
    json_decref(root);
    return st;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static loom_status sort_and_check_unique(loom_weights_t w) {
    if (w->n_tensors > 1) qsort(w->tensors, (size_t)w->n_tensors, sizeof *w->tensors, cmp_by_name);
    for (int i = 1; i < w->n_tensors; i++) {
        const st_tensor *a = &w->tensors[i - 1], *b = &w->tensors[i];
        if (!strcmp(a->name, b->name))
            return loom__error(LOOM_ERR_FORMAT, "tensor '%s' appears in both '%s' and '%s'",
                               a->name, w->files[a->file].path, w->files[b->file].path);
    }
    return LOOM_OK;
}

static const st_tensor *lookup(loom_weights_t w, const char *name) {
    st_tensor key = {.name = (char *)name};
    if (w->n_tensors == 0) return NULL;
    return bsearch(&key, w->tensors, (size_t)w->n_tensors, sizeof *w->tensors, cmp_by_name);
}

// Index of the already opened file `path`, or -1.
static int file_index(loom_weights_t w, const char *path) {
    for (int i = 0; i < w->n_files; i++)
        if (!strcmp(w->files[i].path, path)) return i;
    return -1;
}

// Open a sharded set from its index JSON: {"metadata": {...}, "weight_map": {name: shard}}.
static loom_status add_index(loom_weights_t w, const char *index_path) {
    loom__mapped_file map;
    LOOM_CHECK(loom__map_file(index_path, "safetensors index", &map));
    json_error_t jerr;
    json_t *root = json_loadb((const char *)map.data, map.size, JSON_REJECT_DUPLICATES, &jerr);
    loom__unmap_file(&map);
    if (!root)
        return loom__error(LOOM_ERR_FORMAT, "safetensors index '%s' is not valid JSON: %s "
                           "(line %d, column %d)", index_path, jerr.text, jerr.line, jerr.column);

    loom_status st = LOOM_OK;
    char *dir = loom__path_dirname(index_path);
    char *shard_path = NULL;
    json_t *map_obj = json_object_get(root, "weight_map");
    const char *name;
    json_t *value;
    if (!dir) {
        st = LOOM_ERR_NOMEM;
        goto done;
    }
    if (!json_is_object(map_obj)) {
        st = loom__error(LOOM_ERR_FORMAT, "safetensors index '%s' has no \"weight_map\" object "
                         "(expected {\"weight_map\": {tensor: shard file}})", index_path);
        goto done;
    }
    // Open every shard once.
    json_object_foreach(map_obj, name, value) {
        const char *shard = json_string_value(value);
        if (!shard || !*shard) {
            st = loom__error(LOOM_ERR_FORMAT, "safetensors index '%s': shard of tensor '%s' is "
                             "not a file name", index_path, name);
            goto done;
        }
        loom__free(shard_path);
        if (!(shard_path = loom__path_join(dir, shard))) {
            st = LOOM_ERR_NOMEM;
            goto done;
        }
        if (file_index(w, shard_path) >= 0) continue;
        st = add_file(w, shard_path);
        if (st < 0) {
            loom__error_prefix("safetensors index '%s' (shard '%s' of tensor '%s')", index_path,
                               shard, name);
            goto done;
        }
    }
    LOOM_CHECK_GOTO(sort_and_check_unique(w), st, done);
    // Every tensor the index lists must be in the shard it names.
    json_object_foreach(map_obj, name, value) {
        loom__free(shard_path);
        if (!(shard_path = loom__path_join(dir, json_string_value(value)))) {
            st = LOOM_ERR_NOMEM;
            goto done;
        }
        const st_tensor *t = lookup(w, name);
        if (!t || strcmp(w->files[t->file].path, shard_path)) {
            st = loom__error(LOOM_ERR_FORMAT, "safetensors index '%s' lists tensor '%s' in shard "
                             "'%s', but that shard has no such tensor%s%s%s", index_path, name,
                             shard_path, t ? " (it is in '" : "",
                             t ? w->files[t->file].path : "", t ? "')" : "");
            goto done;
        }
    }
done:
    loom__free(shard_path);
    loom__free(dir);
    json_decref(root);
    return st;
}

static int ends_with(const char *s, const char *suffix) {
    size_t ns = strlen(s), nx = strlen(suffix);
    return ns >= nx && !strcmp(s + ns - nx, suffix);
}

// Open whatever `path` names (see the header).
static loom_status open_path(loom_weights_t w, const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int err = errno;
        return loom__error(err == ENOENT ? LOOM_ERR_NOT_FOUND : LOOM_ERR_IO,
                           "cannot open weights '%s': %s", path, strerror(err));
    }
    if (!S_ISDIR(sb.st_mode)) {
        if (ends_with(path, ".json")) return add_index(w, path);
        LOOM_CHECK(add_file(w, path));
        return sort_and_check_unique(w);
    }
    char *single = loom__path_join(path, LOOM_ST_SINGLE_NAME);
    char *index = loom__path_join(path, LOOM_ST_INDEX_NAME);
    loom_status st;
    if (!single || !index) {
        st = LOOM_ERR_NOMEM;
    } else if (loom__is_regular_file(single)) {
        st = add_file(w, single);
        if (st >= 0) st = sort_and_check_unique(w);
    } else if (loom__is_regular_file(index)) {
        st = add_index(w, index);
    } else {
        st = loom__error(LOOM_ERR_NOT_FOUND, "directory '%s' holds neither %s nor %s", path,
                         LOOM_ST_SINGLE_NAME, LOOM_ST_INDEX_NAME);
    }
    loom__free(single);
    loom__free(index);
    return st;
}

loom_status loom_weights_open(const char *path, loom_weights_t *out) {
    if (!out) return loom__error(LOOM_ERR_INVALID, "loom_weights_open: out is NULL");
    *out = NULL;
    if (!path || !*path) return loom__error(LOOM_ERR_INVALID, "loom_weights_open: empty path");
    loom_weights_t w = loom__calloc(1, sizeof *w);
    if (!w) return LOOM_ERR_NOMEM;
    loom_status st = LOOM_ERR_NOMEM;
    if ((w->path = loom__strdup(path))) st = open_path(w, path);
    if (st < 0) {
        loom_weights_close(w);
        return st;
    }
    *out = w;
    return LOOM_OK;
}

void loom_weights_close(loom_weights_t w) {
    if (!w) return;
    for (int i = 0; i < w->n_files; i++) {
        loom__unmap_file(&w->files[i].map);
        json_decref(w->files[i].metadata);
        loom__free(w->files[i].path);
    }
    for (int i = 0; i < w->n_tensors; i++) loom__free(w->tensors[i].name);
    loom__free(w->files);
    loom__free(w->tensors);
    loom__free(w->path);
    loom__free(w);
}

int loom_weights_count(loom_weights_t w) { return w ? w->n_tensors : 0; }

const char *loom_weights_path(loom_weights_t w) { return w ? w->path : NULL; }

static void fill_info(loom_weights_t w, const st_tensor *t, loom_tensor_info *info) {
    memset(info, 0, sizeof *info);
    info->name = t->name;
    info->dtype = t->dtype;
    info->ndim = t->ndim;
    memcpy(info->shape, t->shape, sizeof t->shape);
    info->file = w->files[t->file].path;
}

loom_status loom_weights_info_at(loom_weights_t w, int i, loom_tensor_info *info) {
    if (!w || !info) return loom__error(LOOM_ERR_INVALID, "loom_weights_info_at: NULL argument");
    if (i < 0 || i >= w->n_tensors)
        return loom__error(LOOM_ERR_INVALID, "loom_weights_info_at: index %d out of range "
                           "[0, %d) for '%s'", i, w->n_tensors, w->path);
    fill_info(w, &w->tensors[i], info);
    return LOOM_OK;
}

// A tensor whose name equals `name` up to a leading "prefix." on either side, or NULL.
static const char *close_name(loom_weights_t w, const char *name) {
    size_t nn = strlen(name);
    for (int i = 0; i < w->n_tensors; i++) {
        const char *c = w->tensors[i].name;
        size_t nc = strlen(c);
        if (nc > nn && c[nc - nn - 1] == '.' && !strcmp(c + nc - nn, name)) return c;
        if (nn > nc && name[nn - nc - 1] == '.' && !strcmp(name + nn - nc, c)) return c;
    }
    return NULL;
}

static loom_status find_tensor(loom_weights_t w, const char *name, const st_tensor **out) {
    if (!w || !name) return loom__error(LOOM_ERR_INVALID, "loom_weights: NULL weights or name");
    *out = lookup(w, name);
    if (*out) return LOOM_OK;
    const char *hint = close_name(w, name);
    return loom__error(LOOM_ERR_NOT_FOUND, "tensor '%s' not found in '%s'%s%s%s", name, w->path,
                       hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "");
}

loom_status loom_weights_find(loom_weights_t w, const char *name, loom_tensor_info *info) {
    const st_tensor *t;
    LOOM_CHECK(find_tensor(w, name, &t));
    if (info) fill_info(w, t, info);
    return LOOM_OK;
}

bool loom_weights_has(loom_weights_t w, const char *name) {
    return w && name && lookup(w, name) != NULL;
}

const char *loom_weights_metadata(loom_weights_t w, const char *key) {
    if (!w || !key) return NULL;
    for (int i = 0; i < w->n_files; i++) {
        const char *v = json_string_value(json_object_get(w->files[i].metadata, key));
        if (v) return v;
    }
    return NULL;
}

// Find `name` and check its shape is exactly (ndim, shape).
static loom_status find_with_shape(loom_weights_t w, const char *name, int ndim,
                                   const int64_t *shape, const void *dst, const st_tensor **out) {
    LOOM_CHECK(find_tensor(w, name, out));
    if (!dst || ndim < 0 || ndim > LOOM_MAX_DIMS || (ndim > 0 && !shape))
        return loom__error(LOOM_ERR_INVALID, "reading tensor '%s': NULL destination or bad "
                           "expected shape (ndim %d)", name, ndim);
    const st_tensor *t = *out;
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char have[128], want[128];
        return loom__error(LOOM_ERR_SHAPE, "tensor '%s' in file '%s' has shape %s, expected %s",
                           name, w->files[t->file].path,
                           loom__st_format_shape(have, sizeof have, t->ndim, t->shape),
                           loom__st_format_shape(want, sizeof want, ndim, shape));
    }
    return LOOM_OK;
}

static loom_status wrong_dtype(loom_weights_t w, const st_tensor *t, const char *wanted) {
    return loom__error(LOOM_ERR_UNSUPPORTED, "tensor '%s' in file '%s' has dtype %s; it cannot be "
                       "read as %s", t->name, w->files[t->file].path, loom_dtype_name(t->dtype),
                       wanted);
}

loom_status loom_weights_read_f32(loom_weights_t w, const char *name, int ndim,
                                  const int64_t *shape, float *dst) {
    const st_tensor *t;
    LOOM_CHECK(find_with_shape(w, name, ndim, shape, dst, &t));
    const uint8_t *src = w->files[t->file].map.data + t->offset;
    size_t n = t->nbytes / loom_dtype_size(t->dtype);
    switch (t->dtype) {
    case LOOM_DTYPE_F32: memcpy(dst, src, t->nbytes); return LOOM_OK;
    case LOOM_DTYPE_F16: loom__f16_to_f32_n(dst, src, n); return LOOM_OK;
    case LOOM_DTYPE_BF16: loom__bf16_to_f32_n(dst, src, n); return LOOM_OK;
    default: return wrong_dtype(w, t, "fp32 (it is an integer tensor)");
    }
}

loom_status loom_weights_read_i32(loom_weights_t w, const char *name, int ndim,
                                  const int64_t *shape, int32_t *dst) {
    const st_tensor *t;
    LOOM_CHECK(find_with_shape(w, name, ndim, shape, dst, &t));
    const uint8_t *src = w->files[t->file].map.data + t->offset;
    size_t n = t->nbytes / loom_dtype_size(t->dtype);
    switch (t->dtype) {
    case LOOM_DTYPE_I32: memcpy(dst, src, t->nbytes); return LOOM_OK;
    case LOOM_DTYPE_U16:
        for (size_t i = 0; i < n; i++) dst[i] = (int32_t)(src[2 * i] | src[2 * i + 1] << 8);
        return LOOM_OK;
    case LOOM_DTYPE_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, src + 8 * i, sizeof v);
            if (v < INT32_MIN || v > INT32_MAX)
                return loom__error(LOOM_ERR_UNSUPPORTED, "tensor '%s' in file '%s': I64 value "
                                   "%lld at element %zu does not fit in int32", t->name,
                                   w->files[t->file].path, (long long)v, i);
            dst[i] = (int32_t)v;
        }
        return LOOM_OK;
    default: return wrong_dtype(w, t, "int32 (it is a float tensor)");
    }
}
