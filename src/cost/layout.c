// Per-op strategy search inside a stage: which strategy each op takes in a tensor-parallel group
// (the family's Megatron table, replication, or a split along any dim its annotation allows),
// found by coordinate descent over one layer of the model, every layer alike.
//
// A layout is a set of overrides of the table, each a partition constraint (op signature and
// module suffix, allowing exactly the chosen split): the planner, the runtime and plan files then
// follow it through the mechanism every policy already obeys.

#include "cost/autodist-impl.h"

#include "core/core.h"
#include "ir/annotation.h"
#include "models/family.h"
#include "plan/plan.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

// A layout must beat the current one by this much to replace it: measured op times move by a
// few percent from run to run, and the table is the layout people know.
#define AD_LAYOUT_GAIN 0.03
#define MAX_GROUPS 48
#define MAX_CHOICES 8
#define MAX_PASSES 3

// ---- layouts --------------------------------------------------------------------------------

static loom_status push_layout(ad_ctx *ctx, ad_layout *l, int *index) {
    if (ctx->n_layouts == ctx->cap_layouts) {
        int cap = ctx->cap_layouts ? 2 * ctx->cap_layouts : 4;
        ad_layout *a = loom__realloc(ctx->layouts, (size_t)cap * sizeof *a);
        if (!a) return LOOM_ERR_NOMEM;
        ctx->layouts = a, ctx->cap_layouts = cap;
    }
    *index = ctx->n_layouts;
    ctx->layouts[ctx->n_layouts++] = *l;
    return LOOM_OK;
}

static void layout_free(ad_layout *l, int owned) {
    for (int i = 0; i < l->n; i++) loom__free(l->ov[i].module);
    loom__free(l->ov);
    if (owned) loom_constraints_free(l->constraints);
    loom__free(l->description);
    memset(l, 0, sizeof *l);
}

loom_status loom__ad_layouts_init(ad_ctx *ctx) {
    ad_layout table = {.tp = 0, .constraints = ctx->cfg.constraints,
                       .description = loom__strdup("")};
    if (!table.description) return LOOM_ERR_NOMEM;
    int index;
    loom_status st = push_layout(ctx, &table, &index);
    if (st < 0) loom__free(table.description);
    return st;
}

void loom__ad_layouts_free(ad_ctx *ctx) {
    for (int i = 0; i < ctx->n_layouts; i++) layout_free(&ctx->layouts[i], i > 0);
    loom__free(ctx->layouts), loom__free(ctx->searched);
    ctx->layouts = NULL, ctx->searched = NULL;
    ctx->n_layouts = ctx->cap_layouts = ctx->n_searched = ctx->cap_searched = 0;
}

// The user's constraints followed by one per override (allowing exactly its split).
static loom_status layout_constraints(const ad_ctx *ctx, const ad_override *ov, int n,
                                      loom_constraints_t *out) {
    loom_constraints_t user = ctx->cfg.constraints;
    int n_user = loom_constraints_count(user);
    loom_partition_constraint *items = loom__calloc((size_t)(n_user + n) + 1, sizeof *items);
    loom_partition_dim *dims = loom__calloc((size_t)n + 1, sizeof *dims);
    if (!items || !dims) return loom__free(items), loom__free(dims), LOOM_ERR_NOMEM;
    for (int i = 0; i < n_user; i++) items[i] = *loom_constraints_at(user, i);
    for (int i = 0; i < n; i++) {
        dims[i] = (loom_partition_dim){ov[i].input, ov[i].dim};
        items[n_user + i] = (loom_partition_constraint){
            .name = ov[i].op, .parent_module = ov[i].module, .n_allowed = ov[i].split ? 1 : 0,
            .allowed = ov[i].split ? &dims[i] : NULL, .replica_allowed = !ov[i].split};
    }
    loom_status st = loom_constraints_create(items, n_user + n, out);
    loom__free(items), loom__free(dims);
    return st;
}

// "attn: split b; mlp.c_fc: replicated", naming the split by its annotation identifier.
static char *describe(const ad_override *ov, const char *const *how, int n) {
    size_t cap = 1;
    for (int i = 0; i < n; i++) cap += strlen(ov[i].module) + strlen(how[i]) + 8;
    char *d = loom__malloc(cap);
    if (!d) return NULL;
    size_t len = 0;
    d[0] = '\0';
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(d + len, cap - len, "%s%s: %s", i ? "; " : "",
                                ov[i].module[0] ? ov[i].module : "(top)", how[i]);
    return d;
}

static int same_overrides(const ad_layout *l, const ad_override *ov, int n) {
    if (l->n != n) return 0;
    for (int i = 0; i < n; i++)
        if (strcmp(l->ov[i].module, ov[i].module) || strcmp(l->ov[i].op, ov[i].op) ||
            l->ov[i].split != ov[i].split ||
            (ov[i].split && (l->ov[i].input != ov[i].input || l->ov[i].dim != ov[i].dim)))
            return 0;
    return 1;
}

// Copies the overrides; `how` describes each (NULL: "split input I dim D" / "replicated"). A
// layout equal to one of tp's already registered is that one.
static loom_status add_layout(ad_ctx *ctx, int tp, const ad_override *ov, int n,
                              const char *const *how, int *index) {
    for (int k = 1; k < ctx->n_layouts; k++)
        if (ctx->layouts[k].tp == tp && same_overrides(&ctx->layouts[k], ov, n)) {
            *index = k;
            return LOOM_OK;
        }
    ad_layout l = {.tp = tp, .n = n};
    l.ov = loom__calloc((size_t)n + 1, sizeof *l.ov);
    char (*said)[48] = loom__calloc((size_t)n + 1, sizeof *said);
    const char **words = loom__calloc((size_t)n + 1, sizeof *words);
    loom_status st = l.ov && said && words ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int i = 0; st == 0 && i < n; i++) {
        l.ov[i] = ov[i];
        l.ov[i].module = loom__strdup(ov[i].module);
        if (!l.ov[i].module) st = LOOM_ERR_NOMEM;
        if (ov[i].split) snprintf(said[i], sizeof said[i], "split input %d dim %d", ov[i].input,
                                  ov[i].dim);
        else snprintf(said[i], sizeof said[i], "replicated");
        words[i] = how && how[i] ? how[i] : said[i];
    }
    if (st == 0) st = layout_constraints(ctx, l.ov, n, &l.constraints);
    if (st == 0 && !(l.description = describe(l.ov, words, n))) st = LOOM_ERR_NOMEM;
    if (st == 0) st = push_layout(ctx, &l, index);
    if (st < 0) layout_free(&l, 1);
    loom__free(said), loom__free(words);
    return st;
}

// ---- the search -----------------------------------------------------------------------------

// One choice for a group: the table's strategy (no override) or an override, and its words.
typedef struct choice {
    int table;
    ad_override ov;       // module and op filled from the group
    char how[48];
} choice;

// The ops of one signature under one module suffix: they take the same strategy.
typedef struct group {
    char module[128];     // the suffix inside a layer ("attn.c_attn") or the whole path
    const char *op;
    int block;            // groups of one block move together ("attn", "mlp", outside layers)
    int n_choices;
    choice choices[MAX_CHOICES];
    int base;             // the table's choice, or replication where the table cannot split an
                          // op of the block
    int replicate;        // the choice replicating it, -1 when the constraints forbid it
    int batch;            // the choice splitting input 0 along dim 0, -1 when none
    int unsplittable;     // the table cannot split it
} group;

typedef struct layout_search {
    ad_ctx *ctx;
    int tp;
    loom_graph_t g;
    loom_value loss;
    int n_groups;
    group groups[MAX_GROUPS];
    char blocks[MAX_GROUPS][64];
    int n_blocks;
    int unsplittable;     // some op the table cannot split: the table alone is no layout
    int64_t evaluated;
    struct memo {         // the layouts costed so far: the starts' descents meet often
        int pick[MAX_GROUPS];
        double seconds;
    } *memo;
    int n_memo, cap_memo;
} layout_search;

// The module of node n inside its layer ("attn.c_attn" of "h.0.attn.c_attn"), or the whole path
// outside the layers ("" for the top: the loss); 0 for the layer module itself (an override
// naming it would not reach every layer alike).
static int group_module(const ad_ctx *ctx, const char *path, char *out, size_t cap, int *inside) {
    const char *in = loom__ad_in_layer0(ctx, path);
    *inside = in != NULL;
    const char *m = in ? in : path;
    if ((*inside && !m[0]) || strlen(m) >= cap) return 0;
    snprintf(out, cap, "%s", m);
    return 1;
}

static int block_of(layout_search *ls, const char *module, int inside) {
    char name[64];
    if (!inside) snprintf(name, sizeof name, "(outside layers)");
    else snprintf(name, sizeof name, "%.*s", (int)strcspn(module, "."), module);
    for (int b = 0; b < ls->n_blocks; b++)
        if (!strcmp(ls->blocks[b], name)) return b;
    snprintf(ls->blocks[ls->n_blocks], sizeof ls->blocks[0], "%s", name);
    return ls->n_blocks++;
}

static int same_strategy(const loom_strategy *a, const loom_strategy *b) {
    return a->id == b->id && a->star_dim == b->star_dim && a->chunks == b->chunks;
}

// Words for a split: the annotation identifier it splits ("split b", "split n").
static void split_words(const loom_node *n, const loom_strategy *s, char *buf, size_t cap) {
    loom_annotation ann;
    if (s->id >= 0 && loom__ann_parse(loom__op_def(n->op)->annotation, &ann) == 0)
        snprintf(buf, cap, "split %s", ann.ids[s->id].name);
    else if (s->id == LOOM_SPLIT_STAR)
        snprintf(buf, cap, "split %s", s->star_dim == 0 ? "batch" : "sequence");
    else
        snprintf(buf, cap, "split");
}

// The choices of node n: the table's strategy (unless the table cannot split it), replication,
// and every split of an (input, dim) that the constraints allow and the shapes divide, each once.
static void add_choices(layout_search *ls, const loom_plan *plan, const loom_node *n,
                        int unsplittable, group *gr) {
    loom_strategy seen[MAX_CHOICES];
    int n_seen = 0;
    if (!unsplittable) {
        gr->choices[gr->n_choices++] = (choice){.table = 1, .how = "table"};
        seen[n_seen++] = plan->strategy[n - ls->g->nodes];
    }
    gr->base = 0;
    gr->batch = gr->replicate = -1;
    loom_strategy none = {LOOM_SPLIT_NONE, 0, 1};
    int batch_split = 0;  // a split of the batch dim: other dims of '*' (sequence) cost the same
    // input -1 stands for replication (no input split).
    for (int input = -1; input < n->n_in && gr->n_choices < MAX_CHOICES; input++) {
        int ndim = input < 0 ? 1 : ls->g->values[n->in[input]].ndim;
        for (int dim = 0; dim < ndim && gr->n_choices < MAX_CHOICES; dim++) {
            loom_strategy s = none;
            if (input >= 0 && loom__strategy_from_dim(ls->g, n, input, dim, ls->tp, &s) < 0) {
                loom_clear_error();
                continue;
            }
            int dup = s.id == LOOM_SPLIT_STAR && s.star_dim > 0 && batch_split;
            for (int k = 0; k < n_seen && !dup; k++) dup = same_strategy(&seen[k], &s);
            if (dup || !loom__plan_usable(plan, ls->g, n, &s)) continue;
            batch_split |= s.id == LOOM_SPLIT_STAR && s.star_dim == 0;
            choice c = {.ov = {.module = gr->module, .op = gr->op}};
            if (s.id == LOOM_SPLIT_NONE) {
                snprintf(c.how, sizeof c.how, "replicated");
                gr->replicate = gr->n_choices;
            } else {
                // The (input, dim) a constraint names for it must lead back to it.
                int in = 0, d = 0;
                loom_strategy back;
                if (!loom__strategy_split_dim(ls->g, n, &s, ls->tp, &in, &d) ||
                    loom__strategy_from_dim(ls->g, n, in, d, ls->tp, &back) < 0 ||
                    !same_strategy(&back, &s)) {
                    loom_clear_error();
                    continue;
                }
                c.ov.split = 1, c.ov.input = in, c.ov.dim = d;
                split_words(n, &s, c.how, sizeof c.how);
                if (in == 0 && d == 0) gr->batch = gr->n_choices;
            }
            seen[n_seen++] = s;
            gr->choices[gr->n_choices++] = c;
        }
    }
}

// The groups of the one-layer model: ops the table gives a strategy of their own (the others
// follow their inputs), by module suffix and signature, each naming exactly its ops.
static loom_status find_groups(layout_search *ls) {
    ad_ctx *ctx = ls->ctx;
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = LOOM_POLICY_TP;
    cc.constraints = ctx->cfg.constraints;
    loom_plan plan;
    const loom_graph *g = ls->g;
    uint8_t *unsplittable = loom__malloc((size_t)g->n_nodes + 1);
    if (!unsplittable) return LOOM_ERR_NOMEM;
    loom_status st = loom__plan_create_relaxed(g, &cc, ls->tp, &ctx->model, unsplittable, &plan);
    if (st < 0) return loom__free(unsplittable), st;
    for (int i = 0; i < g->n_nodes && ls->n_groups < MAX_GROUPS; i++) {
        const loom_node *n = &g->nodes[i];
        if (n->backward || plan.strategy[i].id == LOOM_SPLIT_FOLLOW ||
            plan.strategy[i].id == LOOM_SPLIT_QHEADS)
            continue;
        group *gr = &ls->groups[ls->n_groups];
        memset(gr, 0, sizeof *gr);
        int inside = 0;
        if (!group_module(ctx, g->modules[n->module], gr->module, sizeof gr->module, &inside))
            continue;
        gr->op = loom__op_def(n->op)->signature;
        int dup = 0;
        for (int k = 0; k < ls->n_groups && !dup; k++)
            dup = !strcmp(ls->groups[k].module, gr->module) && ls->groups[k].op == gr->op;
        if (dup) continue;
        // Every op the override would reach must be one the table splits like this one.
        int exact = 1;
        for (int j = 0; j < g->n_nodes && exact; j++) {
            const loom_node *m = &g->nodes[j];
            if (m->backward || loom__op_def(m->op)->signature != gr->op ||
                !loom_module_matches(g->modules[m->module], gr->module))
                continue;
            exact = same_strategy(&plan.strategy[j], &plan.strategy[i]) &&
                    !strcmp(g->modules[m->module], g->modules[n->module]);
        }
        if (!exact) continue;
        gr->block = block_of(ls, gr->module, inside);
        add_choices(ls, &plan, n, unsplittable[i], gr);
        gr->unsplittable = unsplittable[i];
        ls->unsplittable |= unsplittable[i];
        if (gr->n_choices > 1 || unsplittable[i]) ls->n_groups++;
    }
    loom__plan_free(&plan);
    loom__free(unsplittable);
    // Where the table cannot split an op, its block starts replicated: the table's splits
    // around it (projections into heads that do not divide) would not divide either.
    for (int k = 0; k < ls->n_groups; k++) {
        group *gr = &ls->groups[k];
        for (int j = 0; j < ls->n_groups; j++)
            if (ls->groups[j].unsplittable && ls->groups[j].block == gr->block &&
                gr->replicate >= 0)
                gr->base = gr->replicate;
        if (gr->unsplittable && gr->base != gr->replicate)
            st = loom__error(LOOM_ERR_SHAPE, "the table cannot split %s in '%s' and the "
                             "constraints forbid replicating it", gr->op, gr->module);
    }
    return st;
}

// Seconds of one micro-batch of the one-layer model under choices `pick` (per group).
static double evaluate(layout_search *ls, const int *pick) {
    size_t bytes = (size_t)ls->n_groups * sizeof *pick;
    for (int i = 0; i < ls->n_memo; i++)
        if (!memcmp(ls->memo[i].pick, pick, bytes)) return ls->memo[i].seconds;
    ad_override ov[MAX_GROUPS];
    int n = 0;
    for (int k = 0; k < ls->n_groups; k++)
        if (!ls->groups[k].choices[pick[k]].table) ov[n++] = ls->groups[k].choices[pick[k]].ov;
    loom_constraints_t c = NULL;
    double seconds = INFINITY;
    ls->evaluated++;
    if (layout_constraints(ls->ctx, ov, n, &c) < 0 ||
        loom__ad_plan_seconds(ls->ctx, ls->g, ls->loss, c, ls->tp, &seconds) < 0)
        seconds = INFINITY;  // a layout the shapes or the lowering refuse
    loom_clear_error();
    loom_constraints_free(c);
    if (ls->n_memo == ls->cap_memo) {
        int cap = ls->cap_memo ? 2 * ls->cap_memo : 64;
        struct memo *m = loom__realloc(ls->memo, (size_t)cap * sizeof *m);
        if (!m) return seconds;  // not remembered: costed again if asked again
        ls->memo = m, ls->cap_memo = cap;
    }
    memcpy(ls->memo[ls->n_memo].pick, pick, bytes);
    ls->memo[ls->n_memo++].seconds = seconds;
    return seconds;
}

// Take `trial` into `pick` when it gains AD_LAYOUT_GAIN over *t (its time then).
static int accept(layout_search *ls, const int *trial, int *pick, double *t) {
    double u = evaluate(ls, trial);
    if (!(u < *t * (1 - AD_LAYOUT_GAIN))) return 0;
    memcpy(pick, trial, (size_t)ls->n_groups * sizeof *pick);
    *t = u;
    return 1;
}

// Improve `pick` one group at a time, then one block at a time (all of it to the table's choice
// or all split by batch), while a move gains AD_LAYOUT_GAIN; returns its time.
static double descend(layout_search *ls, int *pick, double t) {
    int trial[MAX_GROUPS];
    for (int pass = 0; pass < MAX_PASSES; pass++) {
        int moved = 0;
        for (int k = 0; k < ls->n_groups; k++)
            for (int c = 0; c < ls->groups[k].n_choices; c++) {
                if (c == pick[k]) continue;
                memcpy(trial, pick, sizeof trial);
                trial[k] = c;
                moved |= accept(ls, trial, pick, &t);
            }
        for (int b = 0; b < ls->n_blocks; b++)
            for (int to_batch = 0; to_batch <= 1; to_batch++) {
                memcpy(trial, pick, sizeof trial);
                int changed = 0;
                for (int k = 0; k < ls->n_groups; k++) {
                    if (ls->groups[k].block != b) continue;
                    int c = to_batch ? ls->groups[k].batch : ls->groups[k].base;
                    if (c >= 0 && c != trial[k]) trial[k] = c, changed = 1;
                }
                if (!changed) continue;
                moved |= accept(ls, trial, pick, &t);
            }
        if (!moved) break;
    }
    return t;
}

// The picks that make layout l (a registered one of this tp): each group's choice equal to
// l's override of it, else its base. 0 when l overrides an op no group offers that way.
static int picks_of(const layout_search *ls, const ad_layout *l, int *pick) {
    int matched = 0;
    for (int k = 0; k < ls->n_groups; k++) {
        const group *gr = &ls->groups[k];
        pick[k] = gr->base;
        for (int i = 0; i < l->n; i++) {
            const ad_override *o = &l->ov[i];
            if (strcmp(o->module, gr->module) || strcmp(o->op, gr->op)) continue;
            for (int c = 0; c < gr->n_choices; c++) {
                const ad_override *v = &gr->choices[c].ov;
                if (!gr->choices[c].table && v->split == o->split &&
                    (!o->split || (v->input == o->input && v->dim == o->dim)))
                    pick[k] = c, matched++;
            }
        }
    }
    return matched == l->n;
}

// The fastest layout from the table, every group split by batch, and the layouts found for
// this tp at other micro-batch sizes (coordinate descent finds local optima: more starts, fewer
// misses); registered when it beats the table (or the table cannot split some op).
static loom_status search_layout(layout_search *ls, int *layout) {
    *layout = 0;
    int best[MAX_GROUPS], pick[MAX_GROUPS];
    for (int k = 0; k < ls->n_groups; k++) best[k] = ls->groups[k].base;
    double t_table = evaluate(ls, best), t_best = descend(ls, best, t_table);
    if (!isfinite(t_table)) return LOOM_OK;  // this tp cannot split the model: parts say why
    for (int start = 0; start <= ls->ctx->n_layouts; start++) {
        if (start == 0) {
            for (int k = 0; k < ls->n_groups; k++)
                pick[k] = ls->groups[k].batch >= 0 ? ls->groups[k].batch : ls->groups[k].base;
        } else {
            const ad_layout *l = &ls->ctx->layouts[start - 1];
            if (start == 1 || l->tp != ls->tp || !picks_of(ls, l, pick)) continue;
        }
        double t = descend(ls, pick, evaluate(ls, pick));
        if (t < t_best) t_best = t, memcpy(best, pick, sizeof best);
    }
    if (!ls->unsplittable && t_best >= t_table * (1 - AD_LAYOUT_GAIN)) return LOOM_OK;
    ad_override ov[MAX_GROUPS];
    const char *how[MAX_GROUPS];
    int n = 0;
    for (int k = 0; k < ls->n_groups; k++) {
        const choice *c = &ls->groups[k].choices[best[k]];
        if (c->table) continue;
        ov[n] = c->ov;
        how[n++] = c->how;
    }
    return add_layout(ls->ctx, ls->tp, ov, n, how, layout);
}

loom_status loom__ad_layout_search(ad_ctx *ctx, int tp, int micro_batch, int *layout) {
    *layout = 0;
    if (tp <= 1 || !ctx->cfg.op_search) return LOOM_OK;
    for (int i = 0; i < ctx->n_searched; i++)
        if (ctx->searched[i].tp == tp && ctx->searched[i].micro_batch == micro_batch) {
            *layout = ctx->searched[i].layout;
            return LOOM_OK;
        }
    if (ctx->n_searched == ctx->cap_searched) {
        int cap = ctx->cap_searched ? 2 * ctx->cap_searched : 16;
        struct ad_searched *a = loom__realloc(ctx->searched, (size_t)cap * sizeof *a);
        if (!a) return LOOM_ERR_NOMEM;
        ctx->searched = a, ctx->cap_searched = cap;
    }
    layout_search *ls = loom__calloc(1, sizeof *ls);
    if (!ls) return LOOM_ERR_NOMEM;
    ls->ctx = ctx, ls->tp = tp;
    loom_model_config m = ctx->model;
    m.n_layer = 1;
    // Layouts are compared by the spec's roofline: measuring every shape each of them makes
    // would take minutes. The plans built from the winner and the table are then costed like
    // any other (measured, where the search measures), so a roofline mistake costs nothing.
    int measured = ctx->measured;
    ctx->measured = 0;
    loom_status st = loom_graph_create(&ls->g);
    loom__log_mute(1);  // warnings of the layouts tried are not the run's
    if (st == 0) st = loom__model_build_loss_graph(&m, ls->g, micro_batch, ctx->cfg.seq, &ls->loss);
    if (st == 0) st = find_groups(ls);
    if (st == 0 && ls->n_groups > 0) st = search_layout(ls, layout);
    loom__log_mute(0);
    ctx->measured = measured;
    if (st < 0 && st != LOOM_ERR_NOMEM) {  // the table cannot split it: the parts will say why
        loom_clear_error();
        st = LOOM_OK;
    }
    ctx->searched[ctx->n_searched++] = (struct ad_searched){tp, micro_batch, *layout};
    loom_graph_destroy(ls->g);
    loom__free(ls->memo);
    loom__free(ls);
    return st;
}

// ---- layouts of plan files ------------------------------------------------------------------

// Words for overrides read from a file, as the search says them ("split b"): each is looked up
// on the model's ops (one layer) and its split named by the annotation identifier it splits.
static loom_status override_words(ad_ctx *ctx, int tp, const ad_override *ov, int n,
                                  char (*words)[48]) {
    loom_model_config m = ctx->model;
    m.n_layer = 1;
    loom_graph_t g = NULL;
    loom_value loss;
    LOOM_CHECK(loom_graph_create(&g));
    loom_status st = loom__model_build_loss_graph(&m, g, 1, ctx->cfg.seq, &loss);
    for (int i = 0; st == 0 && i < n; i++) {
        snprintf(words[i], sizeof words[i], ov[i].split ? "split input %d dim %d" : "replicated",
                 ov[i].input, ov[i].dim);
        for (int j = 0; ov[i].split && j < g->n_nodes; j++) {
            const loom_node *node = &g->nodes[j];
            char module[128];
            int inside;
            loom_strategy s;
            if (loom__op_def(node->op)->signature != ov[i].op ||
                !group_module(ctx, g->modules[node->module], module, sizeof module, &inside) ||
                strcmp(module, ov[i].module) != 0)
                continue;
            if (loom__strategy_from_dim(g, node, ov[i].input, ov[i].dim, tp, &s) == 0)
                split_words(node, &s, words[i], sizeof words[i]);
            loom_clear_error();  // a split that does not fit the op: the plan check says so
            break;
        }
    }
    loom_graph_destroy(g);
    return st;
}

loom_status loom__ad_layout_add(ad_ctx *ctx, int tp, const ad_override *ov, int n, int *layout) {
    *layout = 0;
    if (n == 0) return LOOM_OK;
    ad_override *own = loom__calloc((size_t)n, sizeof *own);
    if (!own) return LOOM_ERR_NOMEM;
    loom_status st = LOOM_OK;
    for (int i = 0; i < n && st == 0; i++) {
        own[i] = ov[i];
        // The op table's signature: the caller's string need not last.
        int op = loom__op_by_signature(ov[i].op);
        own[i].op = op >= 0 ? loom__op_def((loom_op)op)->signature : NULL;
        if (!own[i].op)
            st = loom__error(LOOM_ERR_INVALID, "layout entry %d: unknown op '%s' (loom's ops are "
                             "named like 'loom.linear')", i, ov[i].op);
    }
    char (*words)[48] = st == 0 ? loom__calloc((size_t)n, sizeof *words) : NULL;
    const char **how = st == 0 ? loom__calloc((size_t)n, sizeof *how) : NULL;
    if (st == 0 && (!words || !how)) st = LOOM_ERR_NOMEM;
    if (st == 0) st = override_words(ctx, tp, own, n, words);
    for (int i = 0; st == 0 && i < n; i++) how[i] = words[i];
    if (st == 0) st = add_layout(ctx, tp, own, n, how, layout);
    loom__free(own), loom__free(words), loom__free(how);
    return st;
}

