// Autodist plan files: the plan a search chose (settings, job, the model's identity, every forward
// op's split and stage keyed by module path and op signature) as JSON, and read back for a model:
// checked field by field and op by op, then estimated afresh.

#include "cost/autodist-impl.h"

#include "core/core.h"
#include "io/fileio.h"
#include "models/family.h"
#include "plan/plan.h"

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define PLAN_FORMAT "loom-autodist-plan"
#define PLAN_VERSION 1

static const char *const fix_model = "re-run the search, or pass the model the plan was made for";

// The integer fields that identify a model (model_type aside).
typedef struct identity_field {
    const char *key;
    size_t offset;
} identity_field;

static const identity_field identity[] = {
    {"n_layer", offsetof(loom_model_config, n_layer)},
    {"n_embd", offsetof(loom_model_config, n_embd)},
    {"n_head", offsetof(loom_model_config, n_head)},
    {"n_kv_head", offsetof(loom_model_config, n_kv_head)},
    {"head_dim", offsetof(loom_model_config, head_dim)},
    {"vocab_size", offsetof(loom_model_config, vocab_size)},
    {"n_inner", offsetof(loom_model_config, n_inner)},
};
#define N_IDENTITY (sizeof identity / sizeof identity[0])

static int *identity_at(const loom_model_config *m, size_t k) {
    return (int *)((const char *)m + identity[k].offset);
}

// ---- the planned model ----------------------------------------------------------------------

// A plan's global forward graph (one micro-batch, with its loss) and its per-op strategies and
// stages, built as the runtime builds them from loom_autodist_apply's settings.
typedef struct planned {
    loom_graph_t g;
    loom_plan plan;
} planned;

// One op of a plan: its key (module path, op signature) and its decision.
typedef struct plan_op {
    const char *module, *op;
    int verdict, input, dim;  // loom__plan_split_parse's
    int stage;
} plan_op;

static void planned_free(planned *pm) {
    loom__plan_free(&pm->plan);
    loom_graph_destroy(pm->g);
    pm->g = NULL;
}

static loom_status planned_build(const ad_ctx *ctx, const loom_autodist_plan *p, planned *pm) {
    memset(pm, 0, sizeof *pm);
    loom_compute_config cc = loom_compute_config_default();
    loom_train_config tc = loom_train_config_default();
    loom_autodist_apply(p, &ctx->cfg, &cc, &tc);
    loom_value loss;
    LOOM_CHECK(loom_graph_create(&pm->g));
    loom_status st = loom__model_build_loss_graph(&ctx->model, pm->g, p->micro_batch,
                                                  ctx->cfg.seq, &loss);
    loom__log_mute(1);  // a plan's warnings ("stays replicated") are for runs
    if (st == 0) st = loom__plan_create(pm->g, &cc, p->tp, &ctx->model, NULL, &pm->plan);
    loom__log_mute(0);
    if (st < 0) planned_free(pm);
    return st;
}

static plan_op planned_op(const planned *pm, int i) {
    const loom_node *n = &pm->g->nodes[i];
    plan_op o = {pm->g->modules[n->module], loom__op_def(n->op)->signature, 0, 0, 0,
                 pm->plan.stage_of ? pm->plan.stage_of[i] : 0};
    o.verdict = loom__strategy_verdict(pm->g, n, &pm->plan.strategy[i], pm->plan.parts,
                                       &o.input, &o.dim);
    return o;
}

// ---- writing --------------------------------------------------------------------------------

static json_t *ints_json(const int *v, int n) {
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_integer(v[i])) < 0) return json_decref(a), NULL;
    return a;
}

// Per pipeline rank, the layers full recomputation recomputes in each of its stages (the most of
// any of its stages: fewer only where a stage has fewer layers).
static void rank_recompute(const loom_autodist_plan *p, int *r) {
    for (int rank = 0; rank < p->pp; rank++) {
        r[rank] = 0;
        for (int c = 0; c < p->chunks; c++)
            if (p->stages[c * p->pp + rank].recompute_layers > r[rank])
                r[rank] = p->stages[c * p->pp + rank].recompute_layers;
    }
}

// The layout's overrides of the family's table: [{"module", "op", "split"}, ...].
static json_t *layout_json(const ad_layout *l) {
    json_t *a = json_array();
    for (int i = 0; a && i < l->n; i++) {
        const ad_override *o = &l->ov[i];
        json_t *e = json_pack("{s:s, s:s, s:o}", "module", o->module, "op", o->op, "split",
                              loom__plan_split_json(o->split, o->input, o->dim));
        if (json_array_append_new(a, e) < 0) return json_decref(a), NULL;
    }
    return a;
}

static json_t *settings_json(const ad_ctx *ctx, const ad_plan *plan) {
    const loom_autodist_plan *p = &plan->pub;
    int *layers = loom__calloc((size_t)p->n_stages + (size_t)p->pp, sizeof(int));
    if (!layers) return NULL;
    int *recompute = layers + p->n_stages;
    for (int s = 0; s < p->n_stages; s++) layers[s] = p->stages[s].n_layers;
    rank_recompute(p, recompute);
    const char *modules = ctx->cfg.recompute_modules ? ctx->cfg.recompute_modules : "";
    json_t *o = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:b, s:s, s:o, s:s, s:o}",
                          "tp", p->tp, "pp", p->pp, "dp", p->dp, "chunks", p->chunks,
                          "micro_batch", p->micro_batch, "num_micro_batches",
                          p->num_micro_batches, "schedule", loom_schedule_name(p->schedule),
                          "recompute", loom_recompute_mode_name(p->recompute), "zero", p->zero,
                          "precision", loom_precision_name(p->precision), "pipeline_layers",
                          ints_json(layers, p->n_stages), "recompute_modules", modules,
                          "recompute_layers", ints_json(recompute, p->pp));
    loom__free(layers);
    if (o && json_object_set_new(o, "layout", layout_json(&ctx->layouts[plan->layout])) < 0)
        json_decref(o), o = NULL;
    return o;
}

static json_t *model_json(const loom_model_config *m) {
    json_t *o = json_pack("{s:s}", "model_type", m->model_type);
    for (size_t k = 0; o && k < N_IDENTITY; k++)
        if (json_object_set_new(o, identity[k].key, json_integer(*identity_at(m, k))) < 0)
            return json_decref(o), NULL;
    return o;
}

static loom_status ops_json(const ad_ctx *ctx, const loom_autodist_plan *p, json_t **out) {
    planned pm;
    LOOM_CHECK(planned_build(ctx, p, &pm));
    json_t *ops = json_array();
    for (int i = 0; ops && i < pm.g->n_nodes; i++) {
        plan_op o = planned_op(&pm, i);
        json_t *e = json_pack("{s:s, s:s, s:o, s:i}", "module", o.module, "op", o.op, "split",
                              loom__plan_split_json(o.verdict, o.input, o.dim), "stage",
                              o.stage);
        if (json_array_append_new(ops, e) < 0) json_decref(ops), ops = NULL;
    }
    planned_free(&pm);
    *out = ops;
    return ops ? LOOM_OK : loom__error(LOOM_ERR_NOMEM, "out of memory listing the plan's ops");
}

// Plan file text: the top level and its sections one member per line, lists of objects (the ops)
// one element per line, anything else on one line ({"module": "wte", ..., "split": [1, 0]}).
static int write_text(FILE *f, json_t *v, int depth) {
    int objects = json_is_array(v) && json_is_object(json_array_get(v, 0));
    if (!objects && !(json_is_object(v) && depth < 2)) return json_dumpf(v, f, JSON_ENCODE_ANY);
    int bad = fputc(objects ? '[' : '{', f) == EOF, indent = 2 * (depth + 1);
    size_t i = 0;
    json_t *e;
    if (objects) {
        json_array_foreach(v, i, e) {
            bad |= fprintf(f, "%s\n%*s", i ? "," : "", indent, "") < 0;
            bad |= write_text(f, e, depth + 1) < 0;
        }
    } else {
        const char *key;
        json_object_foreach(v, key, e) {
            bad |= fprintf(f, "%s\n%*s\"%s\": ", i++ ? "," : "", indent, "", key) < 0;
            bad |= write_text(f, e, depth + 1) < 0;
        }
    }
    bad |= fprintf(f, "\n%*s%c", 2 * depth, "", objects ? ']' : '}') < 0;
    return bad ? -1 : 0;
}

static loom_status write_plan(const char *path, json_t *root) {
    loom__atomic_file af;
    LOOM_CHECK(loom__atomic_open(&af, path));
    if (write_text(af.f, root, 0) < 0 || fputc('\n', af.f) == EOF) {
        loom__atomic_abort(&af);
        return loom__error(LOOM_ERR_IO, "%s: writing the plan failed", path);
    }
    return loom__atomic_commit(&af);
}

// The plan as a JSON tree (NULL root: out of memory); `what` names the destination in errors.
static loom_status plan_json(loom_autodist_t a, const char *what, json_t **root) {
    const ad_ctx *ctx = &a->ctx;
    const loom_autodist_plan *p = &a->best.pub;
    json_t *ops = NULL;
    *root = NULL;
    loom_status st = ops_json(ctx, p, &ops);
    if (st < 0) return loom__error_prefix("saving the plan to %s", what), st;
    *root = json_pack(
        "{s:s, s:i, s:{s:i, s:i, s:i, s:s}, s:o, s:o, s:{s:f, s:I, s:b}, s:o}", "format",
        PLAN_FORMAT, "version", PLAN_VERSION, "job", "devices", ctx->cfg.devices,
        "global_batch", ctx->cfg.global_batch, "seq", ctx->cfg.seq, "device_spec",
        ctx->spec.name, "model", model_json(&ctx->model), "settings", settings_json(ctx, &a->best),
        "predicted", "step_time_s", p->step_time_s, "peak_memory_bytes",
        (json_int_t)p->peak_memory_bytes, "fits", p->fits, "ops", ops);
    return *root ? LOOM_OK
                 : loom__error(LOOM_ERR_NOMEM, "%s: out of memory writing the plan", what);
}

loom_status loom_autodist_save(loom_autodist_t a, const char *path) {
    json_t *root = NULL;
    loom_status st = plan_json(a, path, &root);
    if (st == 0) st = write_plan(path, root);
    json_decref(root);
    return st;
}

loom_status loom__autodist_plan_text(loom_autodist_t a, char **text) {
    *text = NULL;
    json_t *root = NULL;
    loom_status st = plan_json(a, "a message to the other MPI ranks", &root);
    if (st == 0 && !(*text = json_dumps(root, JSON_COMPACT)))
        st = loom__error(LOOM_ERR_NOMEM, "out of memory writing the plan as text");
    json_decref(root);
    return st;
}

// ---- reading --------------------------------------------------------------------------------

// What a plan file says. Strings point into root.
typedef struct plan_file {
    const char *path;
    json_t *root;
    int devices, global_batch, seq;
    loom_model_config model;        // model_type and the identity fields only
    loom_autodist_plan shape;       // the settings
    const char *recompute_modules;  // NULL: none
    int *layers;                    // per virtual stage
    int *recompute_layers;          // per pipeline rank
    char *pipeline_layers;          // layers as loom_compute_config wants them ("2,2")
    int n_ops;
    plan_op *ops;
    int n_layout;                   // overrides of the family's table (module, op borrowed)
    ad_override *layout;
} plan_file;

static void plan_file_free(plan_file *f) {
    json_decref(f->root);
    loom__free(f->layout);
    loom__free(f->layers), loom__free(f->recompute_layers), loom__free(f->pipeline_layers);
    loom__free(f->ops);
    memset(f, 0, sizeof *f);
}

// Reading keeps the first error; later reads return nothing.
typedef struct reader {
    const char *path;
    loom_status st;
} reader;

static const char *type_name(json_type t) {
    switch (t) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_TRUE: return "true or false";
    default: return "a value";
    }
}

// "sec.key" ("key" at the top level), as messages name a field.
static const char *field_name(const char *sec, const char *key, char *buf, size_t cap) {
    snprintf(buf, cap, "%s%s%s", sec, sec[0] ? "." : "", key);
    return buf;
}

// Field `key` of `obj` (in section `sec`) of type `type` (JSON_TRUE: a boolean).
static json_t *get(reader *r, json_t *obj, const char *sec, const char *key, json_type type) {
    if (r->st < 0) return NULL;
    char name[96];
    json_t *v = json_object_get(obj, key);
    if (!v)
        r->st = loom__error(LOOM_ERR_FORMAT, "%s: '%s' is missing: not a plan file of "
                            "loom_autodist_save (loom plan --save-plan)", r->path,
                            field_name(sec, key, name, sizeof name));
    else if (type == JSON_TRUE ? !json_is_boolean(v) : json_typeof(v) != type)
        r->st = loom__error(LOOM_ERR_FORMAT, "%s: '%s' must be %s", r->path,
                            field_name(sec, key, name, sizeof name), type_name(type));
    return r->st < 0 ? NULL : v;
}

static int int_value(reader *r, json_t *v, const char *sec, const char *key, int min) {
    if (!v) return 0;
    json_int_t x = json_integer_value(v);
    if (x >= min && x <= INT_MAX) return (int)x;
    char name[96];
    r->st = loom__error(LOOM_ERR_FORMAT, "%s: '%s' must be an integer >= %d (got %lld)", r->path,
                        field_name(sec, key, name, sizeof name), min, (long long)x);
    return 0;
}

static int get_int(reader *r, json_t *obj, const char *sec, const char *key, int min) {
    return int_value(r, get(r, obj, sec, key, JSON_INTEGER), sec, key, min);
}

static const char *get_str(reader *r, json_t *obj, const char *sec, const char *key) {
    return json_string_value(get(r, obj, sec, key, JSON_STRING));
}

static int precision_from_name(const char *name) {
    for (int p = LOOM_PRECISION_FP32; p < LOOM_PRECISION_COUNT; p++)
        if (!strcmp(name, loom_precision_name((loom_precision)p))) return p;
    return -1;
}

// A named setting: its index by `from_name`, or a format error listing `choices`.
static int get_enum(reader *r, json_t *obj, const char *key, int (*from_name)(const char *),
                    const char *choices) {
    const char *name = get_str(r, obj, "settings", key);
    int v = name ? from_name(name) : -1;
    if (name && v < 0)
        r->st = loom__error(LOOM_ERR_FORMAT, "%s: 'settings.%s' must be %s (got '%s')", r->path,
                            key, choices, name);
    return v;
}

// A list of exactly n integers >= min (a loom__malloc'd array; NULL after an error).
static int *get_ints(reader *r, json_t *obj, const char *key, int n, int min) {
    json_t *a = get(r, obj, "settings", key, JSON_ARRAY);
    if (a && json_array_size(a) != (size_t)n)
        r->st = loom__error(LOOM_ERR_FORMAT, "%s: 'settings.%s' must list %d number%s (one per "
                            "%s), not %zu", r->path, key, n, n == 1 ? "" : "s",
                            !strcmp(key, "pipeline_layers") ? "virtual pipeline stage"
                                                            : "pipeline rank",
                            json_array_size(a));
    int *v = r->st == 0 ? loom__calloc((size_t)n, sizeof(int)) : NULL;
    if (r->st == 0 && !v) r->st = LOOM_ERR_NOMEM;
    for (int i = 0; v && i < n && r->st == 0; i++) {
        json_t *x = json_array_get(a, (size_t)i);
        if (json_is_integer(x)) v[i] = int_value(r, x, "settings", key, min);
        else r->st = loom__error(LOOM_ERR_FORMAT, "%s: 'settings.%s[%d]' must be an integer",
                                 r->path, key, i);
    }
    if (r->st < 0) loom__free(v), v = NULL;
    return v;
}

static void read_job(reader *r, json_t *root, plan_file *f) {
    json_t *job = get(r, root, "", "job", JSON_OBJECT);
    f->devices = get_int(r, job, "job", "devices", 1);
    f->global_batch = get_int(r, job, "job", "global_batch", 1);
    f->seq = get_int(r, job, "job", "seq", 1);
    get_str(r, job, "job", "device_spec");
}

static void read_model(reader *r, json_t *root, plan_file *f) {
    json_t *m = get(r, root, "", "model", JSON_OBJECT);
    const char *type = get_str(r, m, "model", "model_type");
    if (type) snprintf(f->model.model_type, sizeof f->model.model_type, "%s", type);
    for (size_t k = 0; k < N_IDENTITY; k++)
        *identity_at(&f->model, k) = get_int(r, m, "model", identity[k].key, 1);
}

// settings.layout: the ops whose strategy is not the family table's (absent: none).
static void read_layout(reader *r, json_t *settings, plan_file *f) {
    json_t *a = r->st == 0 ? json_object_get(settings, "layout") : NULL;
    if (!a) return;
    if (!json_is_array(a)) {
        r->st = loom__error(LOOM_ERR_FORMAT, "%s: 'settings.layout' must be a list", r->path);
        return;
    }
    f->n_layout = (int)json_array_size(a);
    f->layout = loom__calloc((size_t)f->n_layout + 1, sizeof *f->layout);
    if (!f->layout) r->st = LOOM_ERR_NOMEM;
    for (int i = 0; r->st == 0 && i < f->n_layout; i++) {
        char sec[48];
        snprintf(sec, sizeof sec, "settings.layout[%d]", i);
        json_t *e = json_array_get(a, (size_t)i);
        ad_override *o = &f->layout[i];
        if (!json_is_object(e)) {
            r->st = loom__error(LOOM_ERR_FORMAT, "%s: '%s' must be an object", r->path, sec);
            break;
        }
        o->module = (char *)get_str(r, e, sec, "module");
        o->op = get_str(r, e, sec, "op");
        o->split = loom__plan_split_parse(json_object_get(e, "split"), &o->input, &o->dim);
        if (r->st == 0 && o->split < 0)
            r->st = loom__error(LOOM_ERR_FORMAT, "%s: '%s.split' must be [input, dim] or "
                                "\"replicate\"", r->path, sec);
    }
}

static void read_settings(reader *r, json_t *root, plan_file *f) {
    json_t *s = get(r, root, "", "settings", JSON_OBJECT);
    loom_autodist_plan *p = &f->shape;
    p->tp = get_int(r, s, "settings", "tp", 1);
    p->pp = get_int(r, s, "settings", "pp", 1);
    p->dp = get_int(r, s, "settings", "dp", 1);
    p->chunks = get_int(r, s, "settings", "chunks", 1);
    p->micro_batch = get_int(r, s, "settings", "micro_batch", 1);
    p->num_micro_batches = get_int(r, s, "settings", "num_micro_batches", 1);
    p->schedule = (loom_schedule)get_enum(r, s, "schedule", loom_schedule_from_name,
                                          "1f1b, gpipe or 1f1b_interleaved");
    p->recompute = (loom_recompute_mode)get_enum(r, s, "recompute", loom_recompute_mode_from_name,
                                                 "none, selective or full");
    p->zero = json_is_true(get(r, s, "settings", "zero", JSON_TRUE));
    p->precision = (loom_precision)get_enum(r, s, "precision", precision_from_name,
                                            "fp32 or mixed");
    p->n_stages = p->pp * p->chunks;
    f->layers = get_ints(r, s, "pipeline_layers", p->n_stages, 1);
    const char *modules = get_str(r, s, "settings", "recompute_modules");
    f->recompute_modules = modules && modules[0] ? modules : NULL;
    f->recompute_layers = get_ints(r, s, "recompute_layers", p->pp, 0);
    read_layout(r, s, f);
}

static void read_ops(reader *r, json_t *root, plan_file *f) {
    json_t *ops = get(r, root, "", "ops", JSON_ARRAY);
    if (!ops) return;
    f->n_ops = (int)json_array_size(ops);
    f->ops = loom__calloc((size_t)f->n_ops + 1, sizeof *f->ops);
    if (!f->ops) r->st = LOOM_ERR_NOMEM;
    for (int i = 0; r->st == 0 && i < f->n_ops; i++) {
        char sec[32];
        snprintf(sec, sizeof sec, "ops[%d]", i);
        json_t *e = json_array_get(ops, (size_t)i);
        plan_op *o = &f->ops[i];
        if (!json_is_object(e)) {
            r->st = loom__error(LOOM_ERR_FORMAT, "%s: '%s' must be an object", r->path, sec);
            break;
        }
        o->module = get_str(r, e, sec, "module");
        o->op = get_str(r, e, sec, "op");
        o->stage = get_int(r, e, sec, "stage", 0);
        o->verdict = loom__plan_split_parse(json_object_get(e, "split"), &o->input, &o->dim);
        if (r->st == 0 && o->verdict == LOOM_PLAN_SPLIT_BAD)
            r->st = loom__error(LOOM_ERR_FORMAT, "%s: '%s.split' must be [input, dim], "
                                "\"replicate\" or \"follow\"", r->path, sec);
    }
}

// The layers per virtual stage as loom_compute_config's pipeline_layers ("3,3,2").
static char *layers_text(const int *k, int n) {
    size_t cap = (size_t)n * 12 + 1, len = 0;
    char *s = loom__malloc(cap);
    if (s) s[0] = '\0';
    for (int i = 0; s && i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s%d", i ? "," : "", k[i]);
    return s;
}

// A plan file at `path`, or (text non-NULL) the plan in `text`, which `path` then names.
static loom_status read_plan_file(const char *path, const char *text, plan_file *f) {
    memset(f, 0, sizeof *f);
    f->path = path;
    json_error_t err;
    f->root = text ? json_loads(text, 0, &err) : json_load_file(path, 0, &err);
    if (!f->root && err.line < 0) return loom__error(LOOM_ERR_IO, "%s: %s", path, err.text);
    if (!f->root)
        return loom__error(LOOM_ERR_FORMAT, "%s: line %d, column %d: %s", path, err.line,
                           err.column, err.text);
    reader r = {path, LOOM_OK};
    if (!json_is_object(f->root))
        r.st = loom__error(LOOM_ERR_FORMAT, "%s: expected a JSON object (a plan file of "
                           "loom_autodist_save)", path);
    const char *format = get_str(&r, f->root, "", "format");
    if (format && strcmp(format, PLAN_FORMAT) != 0)
        r.st = loom__error(LOOM_ERR_FORMAT, "%s: 'format' is '%s', not '%s': not an autodist plan "
                           "file (per-op plan files go to the file policy, --policy FILE)", path,
                           format, PLAN_FORMAT);
    int version = get_int(&r, f->root, "", "version", 1);
    if (r.st == 0 && version != PLAN_VERSION)
        r.st = loom__error(LOOM_ERR_FORMAT, "%s: 'version' %d: this loom reads version %d; "
                           "re-run the search", path, version, PLAN_VERSION);
    read_job(&r, f->root, f);
    read_model(&r, f->root, f);
    read_settings(&r, f->root, f);
    read_ops(&r, f->root, f);
    if (r.st == 0 && !(f->pipeline_layers = layers_text(f->layers, f->shape.n_stages)))
        r.st = LOOM_ERR_NOMEM;
    f->shape.pipeline_layers = f->pipeline_layers;
    if (r.st < 0) plan_file_free(f);
    return r.st;
}

// ---- checking -------------------------------------------------------------------------------

// The job must be the file's: devices, global batch and sequence length.
static loom_status check_job(const plan_file *f, const loom_autodist_config *cfg) {
    const char *names[] = {"devices", "global_batch", "seq"};
    int file[] = {f->devices, f->global_batch, f->seq};
    int given[] = {cfg->devices, cfg->global_batch, cfg->seq};
    for (int i = 0; i < 3; i++)
        if (file[i] != given[i])
            return loom__error(LOOM_ERR_INVALID, "%s: %s: file %d, config %d: the plan is for "
                               "the file's job; set %s to %d, or re-run the search for %d",
                               f->path, names[i], file[i], given[i], names[i], file[i], given[i]);
    return LOOM_OK;
}

static loom_status check_model(const plan_file *f, const loom_model_config *model) {
    if (strcmp(f->model.model_type, model->model_type) != 0)
        return loom__error(LOOM_ERR_INVALID, "%s: the plan was made for another model: "
                           "model_type: file %s, model %s; %s", f->path, f->model.model_type,
                           model->model_type, fix_model);
    for (size_t k = 0; k < N_IDENTITY; k++) {
        int want = *identity_at(&f->model, k), have = *identity_at(model, k);
        if (want != have)
            return loom__error(LOOM_ERR_INVALID, "%s: the plan was made for another model: "
                               "%s: file %d, model %d; %s", f->path, identity[k].key, want, have,
                               fix_model);
    }
    return LOOM_OK;
}

static void split_text(const plan_op *o, char *buf, size_t cap) {
    if (o->verdict > 0) snprintf(buf, cap, "[%d, %d]", o->input, o->dim);
    else snprintf(buf, cap, "\"%s\"", o->verdict == 0 ? "replicate" : "follow");
}

// File op i against the model's op i (NULL past the end of either).
static loom_status check_op(const plan_file *f, int i, const plan_op *file, const plan_op *have,
                            int n_model) {
    if (!have)
        return loom__error(LOOM_ERR_INVALID, "%s: op %d: the file has %s in '%s' but the model "
                           "has only %d ops; %s", f->path, i, file->op, file->module, n_model,
                           fix_model);
    if (!file)
        return loom__error(LOOM_ERR_INVALID, "%s: op %d: the file ends after %d ops but the "
                           "model has %s in '%s'; %s", f->path, i, f->n_ops, have->op,
                           have->module, fix_model);
    if (strcmp(file->module, have->module) != 0 || strcmp(file->op, have->op) != 0)
        return loom__error(LOOM_ERR_INVALID, "%s: op %d: the file has %s in '%s' but the model "
                           "has %s in '%s'; %s", f->path, i, file->op, file->module, have->op,
                           have->module, fix_model);
    char want[48], got[48];
    split_text(file, want, sizeof want);
    split_text(have, got, sizeof got);
    if (file->verdict != have->verdict || (file->verdict > 0 && (file->input != have->input ||
                                                                 file->dim != have->dim)))
        return loom__error(LOOM_ERR_INVALID, "%s: op %d (%s in '%s'): the file splits it %s but "
                           "the plan now splits it %s; re-run the search, or pass the model and "
                           "partition constraints the plan was made for", f->path, i, file->op,
                           file->module, want, got);
    if (file->stage != have->stage)
        return loom__error(LOOM_ERR_INVALID, "%s: op %d (%s in '%s'): the file puts it in "
                           "pipeline stage %d but the plan's pipeline_layers put it in stage %d; "
                           "re-run the search", f->path, i, file->op, file->module, file->stage,
                           have->stage);
    return LOOM_OK;
}

// Every op of the planned model, in order, must be the file's (key, split and stage).
static loom_status check_ops(const ad_ctx *ctx, const plan_file *f) {
    planned pm;
    LOOM_CHECK(planned_build(ctx, &f->shape, &pm));
    int n = pm.g->n_nodes;
    loom_status st = LOOM_OK;
    for (int i = 0; st == 0 && (i < n || i < f->n_ops); i++) {
        plan_op have = i < n ? planned_op(&pm, i) : (plan_op){0};
        st = check_op(f, i, i < f->n_ops ? &f->ops[i] : NULL, i < n ? &have : NULL, n);
    }
    planned_free(&pm);
    return st;
}

// ---- loading --------------------------------------------------------------------------------

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// The caller's config with the file's settings fixed (nothing left to search).
static loom_status fixed_config(const plan_file *f, const loom_autodist_config *cfg,
                                loom_autodist_config *out) {
    const loom_autodist_plan *p = &f->shape;
    if (f->recompute_modules && p->recompute != LOOM_RECOMPUTE_NONE)
        return loom__error(LOOM_ERR_INVALID, "%s: 'settings.recompute_modules' is set, so "
                           "'settings.recompute' must be none (got %s)", f->path,
                           loom_recompute_mode_name(p->recompute));
    if (p->chunks > 1 && p->schedule != LOOM_SCHEDULE_1F1B_INTERLEAVED)
        return loom__error(LOOM_ERR_INVALID, "%s: 'settings.chunks' is %d: more than one chunk "
                           "per pipeline rank needs the 1f1b_interleaved schedule", f->path,
                           p->chunks);
    if ((int64_t)p->micro_batch * p->num_micro_batches * p->dp != f->global_batch)
        return loom__error(LOOM_ERR_INVALID, "%s: micro_batch %d x num_micro_batches %d x dp %d "
                           "is not the global batch %d; re-run the search", f->path,
                           p->micro_batch, p->num_micro_batches, p->dp, f->global_batch);
    *out = *cfg;
    out->tp = p->tp, out->pp = p->pp, out->dp = p->dp, out->micro_batch = p->micro_batch;
    out->schedule = p->schedule;
    out->recompute = p->recompute;
    out->zero = p->zero;
    out->precision = p->precision;
    out->recompute_modules = f->recompute_modules;
    out->pipeline_pivots = NULL;  // the file's layers are the split
    return LOOM_OK;
}

// The file's plan, estimated under a->ctx as the best (and only) plan of the result.
static loom_status estimate(struct loom_autodist *a, const plan_file *f, int layout) {
    ad_plan *p = &a->best;
    memset(p, 0, sizeof *p);
    p->pub = f->shape;
    p->layout = layout;
    p->pub.pipeline_layers = NULL;
    p->preset_layers = f->layers;
    p->preset_recompute = f->shape.recompute == LOOM_RECOMPUTE_FULL ? f->recompute_layers : NULL;
    loom_status st = loom__ad_estimate(&a->ctx, p);
    p->preset_layers = p->preset_recompute = NULL;
    if (st < 0) return st;
    // The file's recompute_modules live in its JSON: keep the plan's copy instead.
    a->ctx.cfg.recompute_modules = f->recompute_modules ? p->recompute_spec : NULL;
    a->n_alternatives = 0;
    a->evaluated = 0;  // no search
    a->min_memory = p->pub.peak_memory_bytes;
    if (p->pub.fits) return LOOM_OK;
    return loom__error(LOOM_ERR_NOMEM, "%s: the plan needs %.2f GB per device, over the %.2f GB "
                       "limit: raise the memory limit, or re-run the search for it", f->path,
                       (double)p->pub.peak_memory_bytes / 1e9, a->ctx.cfg.mem_constraint / 1e9);
}

static loom_status load(plan_file *f, const loom_model_config *model,
                        const loom_autodist_config *cfg, struct loom_autodist *a) {
    loom_autodist_config fixed;
    LOOM_CHECK(check_job(f, cfg));
    LOOM_CHECK(check_model(f, model));
    LOOM_CHECK(fixed_config(f, cfg, &fixed));
    int layout = 0;
    loom_status st = loom__ad_resolve(&a->ctx, model, &fixed);
    if (st == 0) st = loom__ad_layout_add(&a->ctx, f->shape.tp, f->layout, f->n_layout, &layout);
    if (st == 0) f->shape.constraints = a->ctx.layouts[layout].constraints;
    if (st == 0) st = check_ops(&a->ctx, f);
    if (st == 0) st = estimate(a, f, layout);
    if (st < 0 && st != LOOM_ERR_NOMEM && strncmp(loom_last_error(), f->path, strlen(f->path)))
        loom__error_prefix("%s", f->path);
    return st;
}

static loom_status load_plan(const char *path, const char *text, const loom_model_config *model,
                             const loom_autodist_config *cfg, loom_autodist_t *out) {
    *out = NULL;
    double t0 = now_s();
    plan_file f;
    LOOM_CHECK(read_plan_file(path, text, &f));
    struct loom_autodist *a = loom__calloc(1, sizeof *a);
    loom_status st = a ? load(&f, model, cfg, a) : LOOM_ERR_NOMEM;
    plan_file_free(&f);
    if (a) a->search_s = now_s() - t0;
    if (st == 0 || (st == LOOM_ERR_NOMEM && a && a->best.stages)) *out = a;
    else loom_autodist_free(a);
    return st;
}

loom_status loom_autodist_load(const char *path, const loom_model_config *model,
                               const loom_autodist_config *cfg, loom_autodist_t *out) {
    return load_plan(path, NULL, model, cfg, out);
}

loom_status loom__autodist_load_text(const char *text, const char *name,
                                     const loom_model_config *model,
                                     const loom_autodist_config *cfg, loom_autodist_t *out) {
    return load_plan(name, text, model, cfg, out);
}
