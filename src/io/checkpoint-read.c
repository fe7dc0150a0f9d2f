// Checkpoint reader: opens a committed sharded directory or a merged one, indexes the slices of
// every global tensor, and reads blocks of them (assembled in checkpoint-blocks.c).

#include "loom/checkpoint.h"

#include "core/core.h"
#include "io/checkpoint-common.h"
#include "io/fileio.h"
#include "io/safetensors-common.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

// ---- reading blocks --------------------------------------------------------------------------

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const ckpt_tensor *)a)->name, ((const ckpt_tensor *)b)->name);
}

ckpt_tensor *loom__ckpt_find(loom_checkpoint_t c, const char *name) {
    ckpt_tensor key = {.name = (char *)name};
    if (!c || !name || c->n_tensors == 0) return NULL;
    return bsearch(&key, c->tensors, (size_t)c->n_tensors, sizeof key, cmp_tensor_name);
}

// The block a caller asks for, checked against t's global shape.
static loom_status requested_box(loom_checkpoint_t c, const ckpt_tensor *t, int ndim,
                                 const int64_t *offset, const int64_t *shape, ckpt_box *out) {
    char have[128];
    if (ndim != t->ndim)
        return loom__error(LOOM_ERR_SHAPE, "checkpoint '%s': tensor '%s' has %d dims (global "
                           "shape %s), but %d were asked for", c->dir, t->name, t->ndim,
                           loom__st_format_shape(have, sizeof have, t->ndim, t->global_shape),
                           ndim);
    for (int d = 0; d < ndim; d++) {
        int64_t lo = offset ? offset[d] : 0, global = t->global_shape[d];
        int64_t extent = shape ? shape[d] : global - lo;
        if (lo < 0 || extent < 0 || lo > global || extent > global - lo) {
            char off[128], want[128];
            return loom__error(LOOM_ERR_SHAPE, "checkpoint '%s': block at offset %s of shape %s "
                               "lies outside tensor '%s' of global shape %s", c->dir,
                               offset ? loom__st_format_shape(off, sizeof off, ndim, offset) : "0",
                               shape ? loom__st_format_shape(want, sizeof want, ndim, shape)
                                     : "(rest)",
                               t->name, loom__st_format_shape(have, sizeof have, ndim,
                                                              t->global_shape));
        }
        out->lo[d] = lo;
        out->hi[d] = lo + extent;
    }
    return LOOM_OK;
}

loom_status loom_checkpoint_read(loom_checkpoint_t c, const char *name, int ndim,
                                 const int64_t *offset, const int64_t *shape, float *dst) {
    if (!c || !name)
        return loom__error(LOOM_ERR_INVALID, "loom_checkpoint_read: NULL checkpoint or name");
    const ckpt_tensor *t = loom__ckpt_find(c, name);
    if (!t)
        return loom__error(LOOM_ERR_NOT_FOUND, "checkpoint '%s' has no tensor '%s'", c->dir,
                           name);
    ckpt_box want;
    LOOM_CHECK(requested_box(c, t, ndim, offset, shape, &want));
    if (loom__ckpt_box_volume(&want, ndim) == 0) return LOOM_OK;
    if (!dst)
        return loom__error(LOOM_ERR_INVALID, "reading tensor '%s' from checkpoint '%s': NULL "
                           "destination", name, c->dir);
    return loom__ckpt_assemble(c, t, &want, dst);
}

// ---- the index -------------------------------------------------------------------------------

static loom_status grow(void **items, int *cap, int count, size_t size) {
    if (count < *cap) return LOOM_OK;
    int new_cap = *cap ? *cap * 2 : 16;
    void *p = loom__realloc(*items, (size_t)new_cap * size);
    if (!p) return LOOM_ERR_NOMEM;
    *items = p;
    *cap = new_cap;
    return LOOM_OK;
}

// Add piece p of global tensor `name`. `index` maps names to positions in c->tensors while
// the checkpoint is built. Shards may repeat a name (with the same global shape); the files of
// a merged checkpoint may not.
static loom_status add_piece(loom_checkpoint_t c, json_t *index, const char *name, int ndim,
                             const int64_t *global_shape, const ckpt_piece *p, bool may_repeat) {
    const char *file = loom_weights_path(c->sources[p->source]);
    json_t *pos = json_object_get(index, name);
    int ti;
    if (pos) {
        ti = (int)json_integer_value(pos);
        ckpt_tensor *t = &c->tensors[ti];
        const char *first = loom_weights_path(c->sources[t->pieces[0].source]);
        if (!may_repeat)
            return loom__error(LOOM_ERR_FORMAT, "checkpoint '%s': tensor '%s' is stored twice "
                               "('%s' and '%s')", c->dir, name, first, file);
        bool same = t->ndim == ndim;
        for (int d = 0; same && d < ndim; d++) same = t->global_shape[d] == global_shape[d];
        if (!same) {
            char a[128], b[128];
            return loom__error(LOOM_ERR_FORMAT, "%s: tensor '%s' has global shape %s, but '%s' "
                               "says %s", file, name,
                               loom__st_format_shape(a, sizeof a, ndim, global_shape), first,
                               loom__st_format_shape(b, sizeof b, t->ndim, t->global_shape));
        }
    } else {
        LOOM_CHECK(grow((void **)&c->tensors, &c->cap_tensors, c->n_tensors, sizeof *c->tensors));
        ckpt_tensor *t = &c->tensors[c->n_tensors];
        memset(t, 0, sizeof *t);
        if (!(t->name = loom__strdup(name))) return LOOM_ERR_NOMEM;
        t->ndim = ndim;
        memcpy(t->global_shape, global_shape, (size_t)ndim * sizeof *global_shape);
        ti = c->n_tensors++;
        if (json_object_set_new(index, name, json_integer(ti)))
            return loom__error(LOOM_ERR_NOMEM, "checkpoint '%s': cannot index tensor '%s'",
                               c->dir, name);
    }
    ckpt_tensor *t = &c->tensors[ti];
    LOOM_CHECK(grow((void **)&t->pieces, &t->cap_pieces, t->n_pieces, sizeof *t->pieces));
    t->pieces[t->n_pieces++] = *p;
    return LOOM_OK;
}

static void sort_tensors(loom_checkpoint_t c) {
    if (c->n_tensors > 1)
        qsort(c->tensors, (size_t)c->n_tensors, sizeof *c->tensors, cmp_tensor_name);
}

// A strict decimal integer into *out; -1 when s is NULL or not one.
static int parse_int64(const char *s, int64_t *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

// A JSON array of ndim integers in [0, INT64_MAX) into out.
static bool json_dims(const json_t *a, int ndim, int64_t *out) {
    if (!json_is_array(a) || (int)json_array_size(a) != ndim) return false;
    for (int d = 0; d < ndim; d++) {
        const json_t *v = json_array_get(a, (size_t)d);
        if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
        out[d] = json_integer_value(v);
    }
    return true;
}

// Parse metadata value `key` of shard w as a JSON object into *out (new reference).
static loom_status shard_json(loom_weights_t w, const char *key, json_t **out) {
    const char *text = loom_weights_metadata(w, key);
    json_error_t jerr;
    *out = text ? json_loads(text, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (json_is_object(*out)) return LOOM_OK;
    json_decref(*out);
    *out = NULL;
    return loom__error(LOOM_ERR_FORMAT, "%s: metadata \"%s\" is %s", loom_weights_path(w), key,
                       !text ? "missing" : "not a JSON object");
}

// The piece of shard tensor `info`, checked against its entries in slices and crcs.
static loom_status shard_piece(loom_weights_t w, const loom_tensor_info *info, json_t *slices,
                               json_t *crcs, int64_t *global_shape, ckpt_piece *p) {
    const char *path = loom_weights_path(w);
    const json_t *slice = json_object_get(slices, info->name);
    const json_t *crc = json_object_get(crcs, info->name);
    if (info->dtype != LOOM_DTYPE_F32)
        return loom__error(LOOM_ERR_FORMAT, "%s: tensor '%s' is %s; checkpoint shards hold F32",
                           path, info->name, loom_dtype_name(info->dtype));
    if (!slice || !crc)
        return loom__error(LOOM_ERR_FORMAT, "%s: tensor '%s' has no entry in the \"%s\" "
                           "metadata", path, info->name,
                           slice ? LOOM_CKPT_KEY_CRC32 : LOOM_CKPT_KEY_SLICES);
    if (!json_dims(json_object_get(slice, "global_shape"), info->ndim, global_shape) ||
        !json_dims(json_object_get(slice, "offset"), info->ndim, p->box.lo))
        return loom__error(LOOM_ERR_FORMAT, "%s: slice of tensor '%s' needs \"global_shape\" and "
                           "\"offset\" arrays of %d non-negative integers", path, info->name,
                           info->ndim);
    for (int d = 0; d < info->ndim; d++) {
        p->box.hi[d] = p->box.lo[d] + info->shape[d];
        if (info->shape[d] > global_shape[d] - p->box.lo[d]) {
            char b[160], g[128];
            return loom__error(LOOM_ERR_FORMAT, "%s: slice %s of tensor '%s' lies outside its "
                               "global shape %s", path,
                               loom__ckpt_format_box(b, sizeof b, &p->box, info->ndim),
                               info->name,
                               loom__st_format_shape(g, sizeof g, info->ndim, global_shape));
        }
    }
    if (!json_is_integer(crc) || json_integer_value(crc) < 0 ||
        json_integer_value(crc) > (json_int_t)UINT32_MAX)
        return loom__error(LOOM_ERR_FORMAT, "%s: crc32 of tensor '%s' is not an unsigned 32-bit "
                           "integer", path, info->name);
    p->crc32 = (uint32_t)json_integer_value(crc);
    p->has_crc32 = true;
    p->file_name = info->name;
    return LOOM_OK;
}

// Check shard `rank`'s metadata and add its slices.
static loom_status add_shard(loom_checkpoint_t c, json_t *index, int rank, int world,
                             int64_t step) {
    loom_weights_t w = c->sources[rank];
    const char *path = loom_weights_path(w);
    const char *format = loom_weights_metadata(w, LOOM_CKPT_KEY_FORMAT);
    if (!format || strcmp(format, LOOM_CKPT_SHARD_FORMAT))
        return loom__error(LOOM_ERR_FORMAT, "%s is not a loom checkpoint shard (its metadata "
                           "needs \"%s\": \"%s\")", path, LOOM_CKPT_KEY_FORMAT,
                           LOOM_CKPT_SHARD_FORMAT);
    int64_t its_rank, its_world, its_step;
    if (parse_int64(loom_weights_metadata(w, LOOM_CKPT_KEY_RANK), &its_rank) ||
        parse_int64(loom_weights_metadata(w, LOOM_CKPT_KEY_WORLD), &its_world) ||
        parse_int64(loom_weights_metadata(w, LOOM_CKPT_KEY_STEP), &its_step))
        return loom__error(LOOM_ERR_FORMAT, "%s: metadata \"%s\", \"%s\" and \"%s\" must be "
                           "decimal integers", path, LOOM_CKPT_KEY_RANK, LOOM_CKPT_KEY_WORLD,
                           LOOM_CKPT_KEY_STEP);
    if (its_rank != rank || its_world != world || its_step != step)
        return loom__error(LOOM_ERR_FORMAT, "%s was written by rank %lld of %lld at step %lld, "
                           "but the checkpoint expects rank %d of %d at step %lld (shards of "
                           "different saves mixed?)", path, (long long)its_rank,
                           (long long)its_world, (long long)its_step, rank, world,
                           (long long)step);
    json_t *slices = NULL, *crcs = NULL;
    loom_status st;
    LOOM_CHECK_GOTO(shard_json(w, LOOM_CKPT_KEY_SLICES, &slices), st, done);
    LOOM_CHECK_GOTO(shard_json(w, LOOM_CKPT_KEY_CRC32, &crcs), st, done);
    int n = loom_weights_count(w);
    if ((int)json_object_size(slices) != n || (int)json_object_size(crcs) != n) {
        st = loom__error(LOOM_ERR_FORMAT, "%s holds %d tensors, but its metadata describes %d "
                         "slices and %d checksums", path, n, (int)json_object_size(slices),
                         (int)json_object_size(crcs));
        goto done;
    }
    for (int i = 0; i < n; i++) {
        loom_tensor_info info;
        ckpt_piece p = {.source = rank};
        int64_t global_shape[LOOM_MAX_DIMS];
        LOOM_CHECK_GOTO(loom_weights_info_at(w, i, &info), st, done);
        LOOM_CHECK_GOTO(shard_piece(w, &info, slices, crcs, global_shape, &p), st, done);
        LOOM_CHECK_GOTO(add_piece(c, index, info.name, info.ndim, global_shape, &p, true), st,
                        done);
    }
done:
    json_decref(slices);
    json_decref(crcs);
    return st;
}

// A copy of metadata `key` of w, or NULL when absent (*out); LOOM_ERR_NOMEM only.
static loom_status copy_metadata(loom_weights_t w, const char *key, char **out) {
    const char *v = loom_weights_metadata(w, key);
    *out = v ? loom__strdup(v) : NULL;
    return v && !*out ? LOOM_ERR_NOMEM : LOOM_OK;
}

static loom_status new_checkpoint(const char *dir, int n_sources, loom_checkpoint_t *out) {
    loom_checkpoint_t c = loom__calloc(1, sizeof *c);
    if (!c) return LOOM_ERR_NOMEM;
    c->dir = loom__strdup(dir);
    c->sources = loom__calloc((size_t)n_sources, sizeof *c->sources);
    if (!c->dir || !c->sources) {
        loom_checkpoint_close(c);
        return LOOM_ERR_NOMEM;
    }
    *out = c;
    return LOOM_OK;
}

loom_status loom__ckpt_open_shards(const char *dir, int world, int64_t step,
                                   const char *const *names, loom_checkpoint_t *out) {
    loom_checkpoint_t c;
    LOOM_CHECK(new_checkpoint(dir, world, &c));
    c->step = step;
    json_t *index = json_object();
    char *path = NULL;
    loom_status st = index ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int r = 0; r < world && st >= 0; r++) {
        loom__free(path);
        if (!(path = loom__path_join(dir, names[r]))) {
            st = LOOM_ERR_NOMEM;
            break;
        }
        st = loom_weights_open(path, &c->sources[r]);
        if (st < 0) {
            loom__error_prefix("checkpoint '%s': shard of rank %d of %d", dir, r, world);
            break;
        }
        c->n_sources = r + 1;
        st = add_shard(c, index, r, world, step);
    }
    if (st >= 0) st = copy_metadata(c->sources[0], LOOM_CKPT_KEY_CONFIG, &c->config_json);
    if (st >= 0) st = copy_metadata(c->sources[0], LOOM_CKPT_KEY_EXTRA, &c->extra_json);
    loom__free(path);
    json_decref(index);
    if (st < 0) {
        loom_checkpoint_close(c);
        return st;
    }
    sort_tensors(c);
    *out = c;
    return LOOM_OK;
}

// ---- opening ---------------------------------------------------------------------------------

// Read checkpoint.json at `path` and open the shards it lists.
static loom_status open_sharded(const char *dir, const char *path, loom_checkpoint_t *out) {
    loom__mapped_file map;
    LOOM_CHECK(loom__map_file(path, "checkpoint index", &map));
    json_error_t jerr;
    json_t *root = json_loadb((const char *)map.data, map.size, JSON_REJECT_DUPLICATES, &jerr);
    loom__unmap_file(&map);
    if (!root)
        return loom__error(LOOM_ERR_FORMAT, "checkpoint index '%s' is not valid JSON: %s (line "
                           "%d)", path, jerr.text, jerr.line);
    const char *format = json_string_value(json_object_get(root, "format"));
    const json_t *world = json_object_get(root, "world"), *step = json_object_get(root, "step");
    const json_t *shards = json_object_get(root, "shards");
    int n = json_is_integer(world) ? (int)json_integer_value(world) : 0;
    bool ok = format && !strcmp(format, LOOM_CKPT_FORMAT) && n >= 1 &&
              json_integer_value(world) == n && json_is_integer(step) &&
              json_integer_value(step) >= 0 && json_is_array(shards) &&
              (int)json_array_size(shards) == n;
    const char **names = ok ? loom__calloc((size_t)n, sizeof *names) : NULL;
    for (int r = 0; ok && names && r < n; r++) {
        names[r] = json_string_value(json_array_get(shards, (size_t)r));
        ok = names[r] && *names[r] && !strchr(names[r], '/');
    }
    loom_status st;
    if (!ok)
        st = loom__error(LOOM_ERR_FORMAT, "checkpoint index '%s' must be {\"format\": \"%s\", "
                         "\"world\": N >= 1, \"step\": K >= 0, \"shards\": [N file names]}",
                         path, LOOM_CKPT_FORMAT);
    else if (!names)
        st = LOOM_ERR_NOMEM;
    else
        st = loom__ckpt_open_shards(dir, n, json_integer_value(step), names, out);
    loom__free(names);
    json_decref(root);
    return st;
}

// The loom name of file tensor `file_name`: its entry in `names` ({file name: loom name}), if any.
static const char *loom_name_of(const json_t *names, const char *file_name) {
    const char *mapped = json_string_value(json_object_get(names, file_name));
    return mapped ? mapped : file_name;
}

// Add every tensor of source s in full.
static loom_status add_merged_source(loom_checkpoint_t c, json_t *index, int s,
                                     const json_t *names) {
    loom_weights_t w = c->sources[s];
    for (int i = 0; i < loom_weights_count(w); i++) {
        loom_tensor_info info;
        LOOM_CHECK(loom_weights_info_at(w, i, &info));
        ckpt_piece p = {.source = s, .file_name = info.name};
        memcpy(p.box.hi, info.shape, sizeof info.shape);
        LOOM_CHECK(add_piece(c, index, loom_name_of(names, info.name), info.ndim, info.shape, &p,
                             false));
    }
    return LOOM_OK;
}

// Whole text file into a NUL-terminated loom__malloc'd string.
static loom_status read_text(const char *path, const char *what, char **out) {
    loom__mapped_file map;
    LOOM_CHECK(loom__map_file(path, what, &map));
    char *text = loom__malloc(map.size + 1);
    if (text) {
        if (map.size) memcpy(text, map.data, map.size);
        text[map.size] = '\0';
    }
    loom__unmap_file(&map);
    *out = text;
    return text ? LOOM_OK : LOOM_ERR_NOMEM;
}

// The optimizer file's step, extra state and name map, when it exists (sources[1]).
static loom_status read_optimizer_metadata(loom_checkpoint_t c, json_t **names) {
    *names = NULL;
    if (c->n_sources < 2) return LOOM_OK;
    loom_weights_t w = c->sources[1];
    const char *step = loom_weights_metadata(w, LOOM_CKPT_KEY_MERGED_STEP);
    if (step && (parse_int64(step, &c->step) || c->step < 0))
        return loom__error(LOOM_ERR_FORMAT, "%s: metadata \"%s\" is not a step count",
                           loom_weights_path(w), LOOM_CKPT_KEY_MERGED_STEP);
    LOOM_CHECK(copy_metadata(w, LOOM_CKPT_KEY_EXTRA, &c->extra_json));
    if (!loom_weights_metadata(w, LOOM_CKPT_KEY_NAMES)) return LOOM_OK;
    return shard_json(w, LOOM_CKPT_KEY_NAMES, names);
}

// A merged directory: model.safetensors (or its sharded set), optimizer.safetensors and
// config.json when present.
static loom_status open_merged(const char *dir, loom_checkpoint_t *out) {
    loom_checkpoint_t c;
    LOOM_CHECK(new_checkpoint(dir, 2, &c));
    char *optimizer = loom__path_join(dir, LOOM_CKPT_OPTIMIZER_NAME);
    char *config = loom__path_join(dir, LOOM_CKPT_CONFIG_NAME);
    json_t *index = json_object(), *names = NULL;
    loom_status st = optimizer && config && index ? LOOM_OK : LOOM_ERR_NOMEM;
    if (st >= 0 && (st = loom_weights_open(dir, &c->sources[0])) >= 0) c->n_sources = 1;
    if (st >= 0 && loom__is_regular_file(optimizer) &&
        (st = loom_weights_open(optimizer, &c->sources[1])) >= 0)
        c->n_sources = 2;
    if (st >= 0 && loom__is_regular_file(config))
        st = read_text(config, "model config", &c->config_json);
    if (st >= 0) st = read_optimizer_metadata(c, &names);
    for (int s = 0; s < c->n_sources && st >= 0; s++)
        st = add_merged_source(c, index, s, names);
    loom__free(optimizer);
    loom__free(config);
    json_decref(index);
    json_decref(names);
    if (st < 0) {
        loom_checkpoint_close(c);
        return st;
    }
    sort_tensors(c);
    *out = c;
    return LOOM_OK;
}

static bool has_file(const char *dir, const char *name) {
    char *path = loom__path_join(dir, name);
    bool found = path && loom__is_regular_file(path);
    loom__free(path);
    return found;
}

loom_status loom_checkpoint_open(const char *dir, loom_checkpoint_t *out) {
    if (!out) return loom__error(LOOM_ERR_INVALID, "loom_checkpoint_open: out is NULL");
    *out = NULL;
    if (!dir || !*dir) return loom__error(LOOM_ERR_INVALID, "loom_checkpoint_open: empty path");
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        int err = errno;
        return loom__error(err == ENOENT ? LOOM_ERR_NOT_FOUND : LOOM_ERR_IO, "cannot open "
                           "checkpoint '%s': %s", dir, strerror(err));
    }
    if (!S_ISDIR(sb.st_mode))
        return loom__error(LOOM_ERR_INVALID, "checkpoint '%s' is not a directory", dir);
    char *index = loom__path_join(dir, LOOM_CKPT_INDEX_NAME);
    if (!index) return LOOM_ERR_NOMEM;
    loom_status st;
    if (loom__is_regular_file(index))
        st = open_sharded(dir, index, out);
    else if (has_file(dir, LOOM_ST_SINGLE_NAME) || has_file(dir, LOOM_ST_INDEX_NAME))
        st = open_merged(dir, out);
    else
        st = loom__error(LOOM_ERR_NOT_FOUND, "checkpoint '%s' is incomplete: it has no %s (rank 0 "
                         "writes it with loom_checkpoint_commit once every rank wrote its shard; "
                         "an interrupted save leaves none) and no %s (merged checkpoint)", dir,
                         LOOM_CKPT_INDEX_NAME, LOOM_ST_SINGLE_NAME);
    loom__free(index);
    return st;
}

// ---- accessors -------------------------------------------------------------------------------

void loom_checkpoint_close(loom_checkpoint_t c) {
    if (!c) return;
    for (int i = 0; i < c->n_sources; i++) loom_weights_close(c->sources[i]);
    for (int i = 0; i < c->n_tensors; i++) {
        loom__free(c->tensors[i].name);
        loom__free(c->tensors[i].pieces);
    }
    loom__free(c->sources);
    loom__free(c->tensors);
    loom__free(c->config_json);
    loom__free(c->extra_json);
    loom__free(c->dir);
    loom__free(c);
}

int64_t loom_checkpoint_step(loom_checkpoint_t c) { return c ? c->step : 0; }

const char *loom_checkpoint_config_json(loom_checkpoint_t c) { return c ? c->config_json : NULL; }

const char *loom_checkpoint_extra_json(loom_checkpoint_t c) { return c ? c->extra_json : NULL; }

int loom_checkpoint_count(loom_checkpoint_t c) { return c ? c->n_tensors : 0; }

const char *loom_checkpoint_name(loom_checkpoint_t c, int i, int *ndim, int64_t *global_shape) {
    if (!c || i < 0 || i >= c->n_tensors) return NULL;
    const ckpt_tensor *t = &c->tensors[i];
    if (ndim) *ndim = t->ndim;
    if (global_shape) memcpy(global_shape, t->global_shape, sizeof t->global_shape);
    return t->name;
}

int loom_checkpoint_has(loom_checkpoint_t c, const char *name) {
    return loom__ckpt_find(c, name) != NULL;
}
