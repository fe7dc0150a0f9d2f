// Models: the family registry, config.json reading and writing, parameter storage (one flat
// fp32 buffer in graph order), random init, and Hugging Face load / save.

#include "models/family.h"

#include "core/core.h"
#include "io/fileio.h"
#include "ir/ir.h"
#include "loom/safetensors.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

struct loom_model {
    loom_model_config cfg;
    const loom_family_i *family;
    int n_tensors;
    char **names;                         // Hugging Face names, graph order
    int *ndim;
    int64_t (*shape)[LOOM_MAX_DIMS];
    size_t *offset;                       // in floats, into data
    int64_t *numel;
    float *data;                          // flat storage, each tensor 64-byte aligned
    size_t n_floats;
};

// ---- registry -----------------------------------------------------------------------------------

const loom_family_i *loom__family(loom_family f) {
    switch (f) {
    case LOOM_FAMILY_GPT2: return &loom__family_gpt2;
    case LOOM_FAMILY_LLAMA: return &loom__family_llama;
    case LOOM_FAMILY_COUNT: break;
    }
    return NULL;
}

int loom_family_from_model_type(const char *model_type) {
    for (int f = 0; f < LOOM_FAMILY_COUNT; f++)
        for (const char *const *t = loom__family((loom_family)f)->model_types; *t; t++)
            if (strcmp(*t, model_type) == 0) return f;
    return -1;
}

loom_model_config loom_model_config_default(loom_family family) {
    const loom_family_i *fam = loom__family(family);
    LOOM_ASSERT(fam);
    return fam->defaults();
}

// ---- config.json --------------------------------------------------------------------------------

loom_status loom__json_int(const json_t *root, const char *path, const char *key, int required,
                           int fallback, int *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return loom__error(LOOM_ERR_FORMAT, "%s: missing required field \"%s\"", path, key);
        *out = fallback;
        return LOOM_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 30))
        return loom__error(LOOM_ERR_FORMAT, "%s: field \"%s\" must be a non-negative integer",
                           path, key);
    *out = (int)json_integer_value(v);
    return LOOM_OK;
}

loom_status loom__json_float(const json_t *root, const char *path, const char *key,
                             int required, float fallback, float *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return loom__error(LOOM_ERR_FORMAT, "%s: missing required field \"%s\"", path, key);
        *out = fallback;
        return LOOM_OK;
    }
    if (!json_is_number(v))
        return loom__error(LOOM_ERR_FORMAT, "%s: field \"%s\" must be a number", path, key);
    *out = (float)json_number_value(v);
    return LOOM_OK;
}

loom_status loom__json_bool(const json_t *root, const char *path, const char *key, int fallback,
                            int *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return LOOM_OK;
    }
    if (!json_is_boolean(v))
        return loom__error(LOOM_ERR_FORMAT, "%s: field \"%s\" must be true or false", path, key);
    *out = json_is_true(v);
    return LOOM_OK;
}

const char *loom__json_str(const json_t *root, const char *key) {
    json_t *v = json_object_get(root, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

// A parsed config.json (`path` names it in messages); takes the reference to `root`.
static loom_status config_from_root(json_t *root, const char *path, loom_model_config *cfg) {
    loom_status st = LOOM_OK;
    if (!json_is_object(root)) {
        st = loom__error(LOOM_ERR_FORMAT, "%s: expected a JSON object", path);
        goto done;
    }
    const char *type = loom__json_str(root, "model_type");
    if (!type) {
        st = loom__error(LOOM_ERR_FORMAT, "%s: missing \"model_type\" (one of gpt2, llama, "
                         "mistral, qwen2)", path);
        goto done;
    }
    int family = loom_family_from_model_type(type);
    if (family < 0) {
        st = loom__error(LOOM_ERR_UNSUPPORTED, "%s: model_type \"%s\" is not supported (loom "
                         "knows gpt2, llama, mistral, qwen2)", path, type);
        goto done;
    }
    st = loom__family((loom_family)family)->from_json(root, path, cfg);
    if (st == 0) {
        st = loom_model_config_validate(cfg);
        if (st < 0) loom__error_prefix("%s", path);
    }
done:
    json_decref(root);
    return st;
}

loom_status loom_model_config_load(const char *path, loom_model_config *cfg) {
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) {
        struct stat st;
        if (stat(path, &st) != 0)
            return loom__error(LOOM_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
        return loom__error(LOOM_ERR_FORMAT, "%s: line %d, column %d: %s", path, err.line,
                           err.column, err.text);
    }
    return config_from_root(root, path, cfg);
}

loom_status loom_model_config_parse(const char *text, const char *source, loom_model_config *cfg) {
    json_error_t err;
    json_t *root = json_loads(text, 0, &err);
    if (!root)
        return loom__error(LOOM_ERR_FORMAT, "%s: line %d, column %d: %s", source, err.line,
                           err.column, err.text);
    return config_from_root(root, source, cfg);
}

char *loom_model_config_to_json(const loom_model_config *cfg) {
    const loom_family_i *fam = loom__family(cfg->family);
    json_t *j = fam ? fam->to_json(cfg) : NULL;
    if (!j) return NULL;
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    return text;
}

loom_status loom_model_config_validate(const loom_model_config *cfg) {
    const loom_family_i *fam = loom__family(cfg->family);
    if (!fam) return loom__error(LOOM_ERR_INVALID, "unknown model family %d", (int)cfg->family);
    if (cfg->vocab_size <= 0 || cfg->n_embd <= 0 || cfg->n_layer <= 0 || cfg->max_seq <= 0 ||
        cfg->n_inner <= 0)
        return loom__error(LOOM_ERR_INVALID, "%s config: vocab_size, hidden size, layers, "
                           "positions and MLP size must all be > 0", fam->name);
    return fam->validate(cfg);
}

// ---- random numbers -----------------------------------------------------------------------------

typedef struct rng {
    uint64_t state;
    int has_spare;
    double spare;
} rng;

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Box-Muller standard normal.
static double rng_normal(void *p) {
    rng *r = p;
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = ((double)(splitmix64(&r->state) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(splitmix64(&r->state) >> 11) / 9007199254740992.0;
    double rad = sqrt(-2.0 * log(u1));
    r->spare = rad * sin(2 * 3.14159265358979323846 * u2);
    r->has_spare = 1;
    return rad * cos(2 * 3.14159265358979323846 * u2);
}

// ---- storage ------------------------------------------------------------------------------------

void loom_model_free(loom_model_t m) {
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) loom__free(m->names[i]);
    loom__free(m->names);
    loom__free(m->ndim);
    loom__free(m->shape);
    loom__free(m->offset);
    loom__free(m->numel);
    loom__free_aligned(m->data);
    loom__free(m);
}

// Lay out the parameters in the order the family's graph creates them (the same order and
// alignment lowering uses for the PARAM region).
static loom_status model_alloc(const loom_model_config *cfg, loom_model_t *out) {
    *out = NULL;
    LOOM_CHECK(loom_model_config_validate(cfg));
    loom_model_t m = loom__calloc(1, sizeof *m);
    if (!m) return LOOM_ERR_NOMEM;
    m->cfg = *cfg;
    m->family = loom__family(cfg->family);
    loom_graph_t g = NULL;
    loom_status st = loom_graph_create(&g);
    if (st < 0) goto fail;
    st = m->family->build(cfg, g, LOOM_GRAPH_FORWARD, 1, 1, 0);
    if (st < 0) goto fail;
    int n = 0;
    for (int v = 0; v < g->n_values; v++) n += g->values[v].role == LOOM_ROLE_PARAM;
    m->names = loom__calloc((size_t)n, sizeof(char *));
    m->ndim = loom__calloc((size_t)n, sizeof(int));
    m->shape = loom__calloc((size_t)n, sizeof *m->shape);
    m->offset = loom__calloc((size_t)n, sizeof(size_t));
    m->numel = loom__calloc((size_t)n, sizeof(int64_t));
    if (!m->names || !m->ndim || !m->shape || !m->offset || !m->numel) {
        st = LOOM_ERR_NOMEM;
        goto fail;
    }
    for (int v = 0; v < g->n_values; v++) {
        const loom_value_info *vi = &g->values[v];
        if (vi->role != LOOM_ROLE_PARAM) continue;
        int i = m->n_tensors++;
        m->names[i] = loom__strdup(vi->name);
        if (!m->names[i]) {
            st = LOOM_ERR_NOMEM;
            goto fail;
        }
        m->ndim[i] = vi->ndim;
        memcpy(m->shape[i], vi->shape, sizeof m->shape[i]);
        m->numel[i] = loom__value_numel(g, v);
        m->offset[i] = m->n_floats;
        m->n_floats += ((size_t)m->numel[i] + 15) & ~(size_t)15;
    }
    m->data = loom__malloc_aligned(m->n_floats * sizeof(float));
    if (!m->data) {
        st = loom__error(LOOM_ERR_NOMEM, "out of memory for %zu parameters", m->n_floats);
        goto fail;
    }
    memset(m->data, 0, m->n_floats * sizeof(float));
    loom_graph_destroy(g);
    *out = m;
    return LOOM_OK;
fail:
    loom_graph_destroy(g);
    loom_model_free(m);
    return st;
}

loom_status loom_model_create(const loom_model_config *cfg, uint64_t seed, loom_model_t *out) {
    LOOM_CHECK(model_alloc(cfg, out));
    loom_model_t m = *out;
    rng r = {.state = seed};
    for (int i = 0; i < m->n_tensors; i++)
        m->family->init(&m->cfg, m->names[i], m->data + m->offset[i], m->numel[i], rng_normal, &r);
    return LOOM_OK;
}

static int find_tensor(loom_model_t m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->names[i], name) == 0) return i;
    return -1;
}

loom_status loom_model_load(const char *dir, loom_model_t *out) {
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    loom_model_config cfg;
    LOOM_CHECK(loom_model_config_load(path, &cfg));
    loom_weights_t w = NULL;
    loom_status st = loom_weights_open(dir, &w);
    if (st < 0) return st;
    loom_model_t m = NULL;
    st = model_alloc(&cfg, &m);
    if (st < 0) goto done;
    // Every model parameter must be in the files, under its name or its file alias.
    char *seen = loom__calloc((size_t)m->n_tensors, 1);
    if (!seen) {
        st = LOOM_ERR_NOMEM;
        goto done;
    }
    int unexpected = 0;
    for (int i = 0; i < loom_weights_count(w) && st == 0; i++) {
        loom_tensor_info info;
        st = loom_weights_info_at(w, i, &info);
        if (st < 0) break;
        char buf[512];
        const char *name = m->family->file_to_param(info.name, buf, sizeof buf);
        if (!name) continue;
        int t = find_tensor(m, name);
        if (t < 0) {
            // A tied head stored anyway is redundant; anything else is worth a warning.
            if (strcmp(info.name, "lm_head.weight") != 0 || !cfg.tie_word_embeddings) {
                if (unexpected++ < 8)
                    loom__log(LOOM_LOG_WARN, "%s: tensor '%s' is not a parameter of this %s "
                              "model; ignored", info.file, info.name, cfg.model_type);
            }
            continue;
        }
        st = loom_weights_read_f32(w, info.name, m->ndim[t], m->shape[t], m->data + m->offset[t]);
        seen[t] = 1;
    }
    for (int t = 0; t < m->n_tensors && st == 0; t++) {
        if (seen[t]) continue;
        char buf[512];
        st = loom__error(LOOM_ERR_NOT_FOUND, "%s: tensor '%s' (or '%s') not found; the files "
                         "do not hold this %s model", loom_weights_path(w), m->names[t],
                         m->family->param_to_file(m->names[t], buf, sizeof buf), cfg.model_type);
    }
    loom__free(seen);
done:
    loom_weights_close(w);
    if (st < 0) {
        loom_model_free(m);
        return st;
    }
    *out = m;
    return LOOM_OK;
}

loom_status loom_model_save(loom_model_t m, const char *dir) {
    LOOM_CHECK(loom__mkdirs(dir));
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    json_t *j = m->family->to_json(&m->cfg);
    if (!j) return loom__error(LOOM_ERR_NOMEM, "out of memory writing %s", path);
    json_object_set_new(j, "torch_dtype", json_string("float32"));
    int rc = json_dump_file(j, tmp, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    if (rc != 0 || rename(tmp, path) != 0) {
        remove(tmp);
        return loom__error(LOOM_ERR_IO, "%s: cannot write (%s)", path, strerror(errno));
    }
    loom_named_tensor *t = loom__calloc((size_t)m->n_tensors, sizeof *t);
    char (*names)[512] = loom__calloc((size_t)m->n_tensors, sizeof *names);
    if (!t || !names) {
        loom__free(t), loom__free(names);
        return LOOM_ERR_NOMEM;
    }
    for (int i = 0; i < m->n_tensors; i++) {
        t[i].name = m->family->param_to_file(m->names[i], names[i], sizeof names[i]);
        t[i].dtype = LOOM_DTYPE_F32;
        t[i].ndim = m->ndim[i];
        memcpy(t[i].shape, m->shape[i], sizeof t[i].shape);
        t[i].data = m->data + m->offset[i];
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    loom_status st = loom_safetensors_write(path, m->n_tensors, t, 1, meta);
    loom__free(t), loom__free(names);
    return st;
}

// ---- accessors ----------------------------------------------------------------------------------

const loom_model_config *loom_model_get_config(loom_model_t m) { return &m->cfg; }

int64_t loom_model_n_params(loom_model_t m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_tensors; i++) n += m->numel[i];
    return n;
}

int loom_model_n_tensors(loom_model_t m) { return m->n_tensors; }

const char *loom_model_tensor_name(loom_model_t m, int i, int *ndim,
                                   int64_t shape[LOOM_MAX_DIMS]) {
    if (i < 0 || i >= m->n_tensors) return NULL;
    if (ndim) *ndim = m->ndim[i];
    if (shape) memcpy(shape, m->shape[i], sizeof m->shape[i]);
    return m->names[i];
}

loom_status loom_model_tensor(loom_model_t m, const char *name, float **data, int64_t *numel) {
    int t = find_tensor(m, name);
    if (t < 0)
        return loom__error(LOOM_ERR_NOT_FOUND, "model has no parameter '%s'", name);
    *data = m->data + m->offset[t];
    if (numel) *numel = m->numel[t];
    return LOOM_OK;
}

loom_status loom_model_build_graph(loom_model_t m, loom_graph_mode mode, int B, int T,
                                   int cache_len, loom_graph_t *out) {
    *out = NULL;
    if (B <= 0 || T <= 0)
        return loom__error(LOOM_ERR_INVALID, "batch (%d) and sequence length (%d) must be > 0",
                           B, T);
    if (mode == LOOM_GRAPH_DECODE && cache_len < T)
        return loom__error(LOOM_ERR_INVALID, "cache length %d is shorter than %d tokens",
                           cache_len, T);
    loom_graph_t g;
    LOOM_CHECK(loom_graph_create(&g));
    loom_status st = m->family->build(&m->cfg, g, mode, B, T, cache_len);
    if (st < 0) {
        loom_graph_destroy(g);
        return st;
    }
    *out = g;
    return LOOM_OK;
}

float *loom__model_storage(loom_model_t m, size_t *n_floats) {
    *n_floats = m->n_floats;
    return m->data;
}

loom_status loom__model_build_loss_graph(const loom_model_config *cfg, loom_graph_t g, int rows,
                                         int seq, loom_value *loss) {
    *loss = LOOM_NONE;
    LOOM_CHECK(loom__family(cfg->family)->build(cfg, g, LOOM_GRAPH_FORWARD, rows, seq, 0));
    int64_t bt[2] = {rows, seq};
    loom_value logits = LOOM_NONE;
    for (int v = 0; v < g->n_values; v++)
        if (g->values[v].is_output) logits = v;
    loom_value targets = loom_graph_input(g, "targets", LOOM_DTYPE_I32, 2, bt);
    loom_value norm = loom_graph_input(g, "loss_norm", LOOM_DTYPE_F32, 1, (int64_t[]){1});
    *loss = loom_mul(g, loom_cross_entropy_sum(g, logits, targets, -100), norm);
    return loom_graph_status(g);
}
