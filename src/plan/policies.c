// Policies: dp (replicate inside the unit), data (split every op on its batch dim), and tp
// (Megatron layout from the model family's policy table). Each assigns a strategy per node.

#include "plan/plan.h"
#include "plan/stages.h"

#include "core/core.h"
#include "models/family.h"

#include <string.h>


static loom_strategy split_by(const loom_node *n, const char *id, int chunks) {
    int k = loom__strategy_find_id(n, id);
    LOOM_ASSERT(k >= 0);  // policy tables name identifiers of their ops' annotations
    return (loom_strategy){k, 0, chunks};
}

// Batch split: the first '*' dim when input 0 has one, else its 'b'.
static loom_strategy data_strategy(const loom_node *n) {
    if (strchr(loom__op_def(n->op)->annotation, '*') &&
        strncmp(loom__op_def(n->op)->annotation, "*", 1) == 0)
        return (loom_strategy){LOOM_SPLIT_STAR, 0, 1};
    int b = loom__strategy_find_id(n, "b");
    if (b >= 0) return (loom_strategy){b, 0, 1};
    return (loom_strategy){LOOM_SPLIT_NONE, 0, 1};
}

// *unsplit_vocab: the vocabulary length when the rule splits it and it does not divide (the op
// is then replicated), else 0.
static loom_status tp_strategy(const loom_graph *g, const loom_node *n, const loom_tp_rule *rule,
                               int parts, const loom_model_config *cfg, loom_strategy *s,
                               int64_t *unsplit_vocab) {
    *unsplit_vocab = 0;
    const char *split = rule->split;
    if (!strcmp(split, "heads")) {
        int64_t heads = n->ai[0], groups = n->ai[1], per_group = heads / groups;
        if (groups % parts == 0) *s = split_by(n, "g", 1);
        else if (per_group % parts == 0) *s = split_by(n, "r", 1);  // k and v replicated
        else if (loom__qheads_splittable(heads, groups, parts))
            *s = (loom_strategy){LOOM_SPLIT_QHEADS, 0, 1};  // one kv head per rank, replicated
        else
            return loom__error(LOOM_ERR_SHAPE,
                               "tensor parallel degree %d divides neither the %lld key/value "
                               "heads nor the %lld query heads per key/value head, nor the "
                               "%lld query heads into blocks inside one group (module '%s'); "
                               "choose a degree that divides one of them", parts,
                               (long long)groups, (long long)per_group, (long long)heads,
                               g->modules[n->module]);
        return LOOM_OK;
    }
    if (!strcmp(split, "kv_n")) {
        int kv = cfg ? cfg->n_kv_head : parts;
        *s = kv % parts == 0 ? split_by(n, "n", 1) : (loom_strategy){LOOM_SPLIT_NONE, 0, 1};
        return LOOM_OK;
    }
    if (!strcmp(split, "vocab")) {
        const char *id = n->op == LOOM_OP_LINEAR ? "n" : "v";
        int64_t V = n->op == LOOM_OP_EMBEDDING ? g->values[n->in[1]].shape[0]
                                                : g->values[n->in[0]].shape[g->values[n->in[0]].ndim - 1];
        if (n->op == LOOM_OP_LINEAR) V = g->values[n->in[1]].shape[0];
        if (V % parts != 0) {
            *unsplit_vocab = V;
            *s = (loom_strategy){LOOM_SPLIT_NONE, 0, 1};
        } else {
            *s = split_by(n, id, 1);
        }
        return LOOM_OK;
    }
    *s = split_by(n, split, rule->chunks);
    return LOOM_OK;
}

// A decision of a custom policy or a plan file: "input,dim", replicate, or follow.
static loom_status decided(const loom_graph *g, const loom_node *n, int parts, int verdict,
                           int input, int dim, loom_strategy *s) {
    if (verdict < 0) *s = (loom_strategy){LOOM_SPLIT_FOLLOW, 0, 1};
    else if (verdict == 0) *s = (loom_strategy){LOOM_SPLIT_NONE, 0, 1};
    else return loom__strategy_from_dim(g, n, input, dim, parts, s);
    return LOOM_OK;
}

static loom_status custom_strategy(const loom_graph *g, const loom_node *n, int parts,
                                   const loom_compute_config *cc, loom_strategy *s) {
    loom_op_view view = {loom__op_def(n->op)->signature, g->modules[n->module],
                         loom__op_def(n->op)->annotation, n->n_in, {0}, {0}};
    for (int i = 0; i < n->n_in && i < 8; i++) {
        view.input_ndim[i] = g->values[n->in[i]].ndim;
        view.input_shape[i] = g->values[n->in[i]].shape;
    }
    int input = 0, dim = 0;
    int verdict = cc->policy_fn(cc->policy_user, &view, parts, &input, &dim);
    loom_status st = decided(g, n, parts, verdict, input, dim, s);
    if (st < 0) loom__error_prefix("custom policy");
    return st;
}

// The table's strategy for node n, or when the table cannot split it: replication, marked in
// unsplittable[i] when the caller asked (the per-op search), or left to the partition constraints
// that name the op (an op they allow to be replicated or split otherwise); else the error.
static loom_status table_strategy(const loom_plan *plan, const loom_graph *g, int i,
                                  const loom_tp_rule *r, const loom_model_config *cfg,
                                  uint8_t *unsplittable, loom_strategy *s,
                                  int64_t *unsplit_vocab) {
    const loom_node *n = &g->nodes[i];
    loom_status st = tp_strategy(g, n, r, plan->parts, cfg, s, unsplit_vocab);
    if (st >= 0) return st;
    int named = loom_constraints_find(plan->constraints, loom__op_def(n->op)->signature,
                                      g->modules[n->module], NULL, 0) > 0;
    if (!unsplittable && !named) return st;
    if (unsplittable) unsplittable[i] = 1;
    else loom__log(LOOM_LOG_DEBUG, "%s; the partition constraints decide instead",
                   loom_last_error());
    loom_clear_error();
    *s = (loom_strategy){LOOM_SPLIT_NONE, 0, 1};
    return LOOM_OK;
}

static loom_status create(const loom_graph *g, const loom_compute_config *cc, int parts,
                          const loom_model_config *cfg, const double *node_cost,
                          uint8_t *unsplittable, loom_plan *plan) {
    memset(plan, 0, sizeof *plan);
    // Inside a stage, pp replicates every op and hybrid splits them as tp does.
    loom_policy_kind policy = cc->policy == LOOM_POLICY_PP       ? LOOM_POLICY_DP
                              : cc->policy == LOOM_POLICY_HYBRID ? LOOM_POLICY_TP
                                                                 : cc->policy;
    if (parts < 1) return loom__error(LOOM_ERR_INVALID, "plan: %d devices per unit", parts);
    if (policy == LOOM_POLICY_CUSTOM && !cc->policy_fn)
        return loom__error(LOOM_ERR_INVALID, "the custom policy needs a policy_fn");
    LOOM_CHECK(loom__constraints_check(cc->constraints));
    plan->constraints = cc->constraints;
    plan->parts = parts;
    plan->policy = policy;
    plan->n_nodes = g->n_nodes;
    plan->strategy = loom__malloc((size_t)(g->n_nodes ? g->n_nodes : 1) * sizeof(loom_strategy));
    if (!plan->strategy) return LOOM_ERR_NOMEM;
    plan->pipe_ranks = cc->pipeline_nstages > 1 ? cc->pipeline_nstages : 1;
    plan->chunks = cc->pipeline_nchunks > 0                                 ? cc->pipeline_nchunks
                   : cc->pipeline_scheduler == LOOM_SCHEDULE_1F1B_INTERLEAVED ? 2
                                                                            : 1;
    if (plan->pipe_ranks * plan->chunks > 1) {
        plan->stage_of = loom__malloc((size_t)(g->n_nodes ? g->n_nodes : 1) * sizeof(int32_t));
        if (!plan->stage_of) return loom__plan_free(plan), LOOM_ERR_NOMEM;
        loom_stage_options so = {plan->pipe_ranks * plan->chunks, cc->pipeline_pivots,
                                 cc->pipeline_layers, node_cost};
        loom_status st = loom__stages_assign(g, &so, plan->stage_of);
        if (st < 0) return loom__plan_free(plan), st;
    }
    const loom_tp_rule *rules = cfg ? loom__family(cfg->family)->tp_rules : NULL;
    if (policy == LOOM_POLICY_TP && !rules)
        return loom__plan_free(plan), loom__error(LOOM_ERR_UNSUPPORTED,
                                                  "the tp policy needs a model family's policy "
                                                  "table (built-in families have one)");
    loom_plan_file *file = NULL;
    if (policy == LOOM_POLICY_FILE) {
        loom_status st = loom__plan_file_load(cc->plan_file, g, &file);
        if (st < 0) return loom__plan_free(plan), st;
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const loom_node *n = &g->nodes[i];
        loom_strategy s = {LOOM_SPLIT_NONE, 0, 1};
        int64_t unsplit_vocab = 0;
        if (parts > 1 && (policy == LOOM_POLICY_CUSTOM || policy == LOOM_POLICY_FILE)) {
            int input = 0, dim = 0;
            int verdict = policy == LOOM_POLICY_CUSTOM
                              ? 0 : loom__plan_file_lookup(file, g, i, &input, &dim);
            loom_status st = policy == LOOM_POLICY_CUSTOM
                                 ? custom_strategy(g, n, parts, cc, &s)
                                 : decided(g, n, parts, verdict, input, dim, &s);
            if (st < 0) {
                loom__plan_file_free(file);
                return loom__plan_free(plan), st;
            }
        }
        // Scalars (the loss and its normalizer) have no batch to split.
        if (policy == LOOM_POLICY_DATA && parts > 1 && loom__value_numel(g, n->in[0]) > 1)
            s = data_strategy(n);
        if (policy == LOOM_POLICY_TP && parts > 1) {
            s = (loom_strategy){LOOM_SPLIT_FOLLOW, 0, 1};
            for (const loom_tp_rule *r = rules; r->module; r++) {
                if (strcmp(r->signature, loom__op_def(n->op)->signature) != 0 ||
                    (r->module[0] && !loom_module_matches(g->modules[n->module], r->module)))
                    continue;
                loom_status st = table_strategy(plan, g, i, r, cfg, unsplittable, &s,
                                                &unsplit_vocab);
                if (st < 0) return loom__plan_free(plan), st;
                break;
            }
        }
        if (s.id != LOOM_SPLIT_FOLLOW) {
            loom_status st = loom__plan_constrain(plan, g, n, &s);
            if (st < 0) {
                loom__plan_file_free(file);
                return loom__plan_free(plan), st;
            }
        }
        if (unsplit_vocab && s.id == LOOM_SPLIT_NONE && !unsplittable)
            loom__log(LOOM_LOG_WARN, "vocabulary of %lld does not split into %d parts: %s in "
                      "'%s' stays replicated", (long long)unsplit_vocab, parts,
                      loom__op_def(n->op)->signature, g->modules[n->module]);
        plan->strategy[i] = s;
    }
    // With one device per unit there is nothing to split: the file is not consulted.
    loom_status st = parts > 1 ? loom__plan_file_unused(file, cc->plan_file) : LOOM_OK;
    loom__plan_file_free(file);
    if (st < 0) loom__plan_free(plan);
    return st;
}

loom_status loom__plan_create(const loom_graph *g, const loom_compute_config *cc, int parts,
                              const loom_model_config *cfg, const double *node_cost,
                              loom_plan *plan) {
    return create(g, cc, parts, cfg, node_cost, NULL, plan);
}

loom_status loom__plan_create_relaxed(const loom_graph *g, const loom_compute_config *cc,
                                      int parts, const loom_model_config *cfg,
                                      uint8_t *unsplittable, loom_plan *plan) {
    memset(unsplittable, 0, (size_t)g->n_nodes);
    return create(g, cc, parts, cfg, NULL, unsplittable, plan);
}

void loom__plan_free(loom_plan *plan) {
    loom__free(plan->strategy);
    loom__free(plan->stage_of);
    plan->strategy = NULL;
    plan->stage_of = NULL;
}
