// Partition constraints (nnScaler's YAML format) applied to the strategy any policy chose.

#include "plan/plan.h"

#include "core/core.h"

#include <stdio.h>
#include <string.h>

loom_status loom__constraints_check(loom_constraints_t c) {
    for (int i = 0; c && i < loom_constraints_count(c); i++) {
        const loom_partition_constraint *pc = loom_constraints_at(c, i);
        if (loom__op_by_signature(pc->name) < 0)
            return loom__error(LOOM_ERR_INVALID, "partition constraint at line %d, column %d: "
                               "unknown op '%s' (loom's ops are named like 'loom.linear'; see "
                               "'loom graph' for the ops of a model)", pc->line, pc->column,
                               pc->name);
    }
    return LOOM_OK;
}

// Whether every matching constraint allows strategy s (replication or its input,dim).
static int allowed(const loom_plan *plan, const loom_graph *g, const loom_node *n,
                   const int *match, int n_match, const loom_strategy *s) {
    int input = -1, dim = -1;
    int splits = loom__strategy_split_dim(g, n, s, plan->parts, &input, &dim);
    if (s->id != LOOM_SPLIT_NONE && !splits) return 0;
    for (int k = 0; k < n_match; k++) {
        const loom_partition_constraint *pc = loom_constraints_at(plan->constraints, match[k]);
        if (!splits) {
            if (!pc->replica_allowed) return 0;
            continue;
        }
        if (pc->n_allowed < 0) continue;
        int ok = 0;
        for (int a = 0; a < pc->n_allowed && !ok; a++) {
            if (pc->allowed[a].input != input) continue;  // also skips inputs the op lacks
            int d = pc->allowed[a].dim;
            if (d < 0) d += g->values[n->in[input]].ndim;
            ok = d == dim;
        }
        if (!ok) return 0;
    }
    return 1;
}

// A strategy is usable when it is allowed and its placements divide the shapes.
static int usable(const loom_plan *plan, const loom_graph *g, const loom_node *n,
                  const int *match, int n_match, const loom_strategy *s) {
    if (!allowed(plan, g, n, match, n_match, s)) return 0;
    loom_placement in[LOOM_MAX_IO], out[LOOM_MAX_IO];
    if (loom__strategy_placements(g, n, s, plan->parts, in, out) < 0) {
        loom_clear_error();
        return 0;
    }
    return 1;
}

int loom__plan_usable(const loom_plan *plan, const loom_graph *g, const loom_node *n,
                      const loom_strategy *s) {
    int match[16], n_match = 0;
    if (plan->constraints && plan->parts > 1) {
        n_match = loom_constraints_find(plan->constraints, loom__op_def(n->op)->signature,
                                        g->modules[n->module], match, 16);
        if (n_match > 16) n_match = 16;
    }
    return usable(plan, g, n, match, n_match, s);
}

loom_status loom__plan_constrain(const loom_plan *plan, const loom_graph *g, const loom_node *n,
                                 loom_strategy *s) {
    if (!plan->constraints || plan->parts == 1) return LOOM_OK;
    int match[16];
    int n_match = loom_constraints_find(plan->constraints, loom__op_def(n->op)->signature,
                                        g->modules[n->module], match, 16);
    if (n_match > 16) n_match = 16;
    if (n_match == 0 || usable(plan, g, n, match, n_match, s)) return LOOM_OK;
    for (int k = 0; k < n_match; k++) {
        const loom_partition_constraint *pc = loom_constraints_at(plan->constraints, match[k]);
        for (int a = 0; a < pc->n_allowed; a++) {
            loom_strategy cand;
            if (loom__strategy_from_dim(g, n, pc->allowed[a].input, pc->allowed[a].dim,
                                        plan->parts, &cand) < 0) {
                loom_clear_error();
                continue;
            }
            if (usable(plan, g, n, match, n_match, &cand)) {
                *s = cand;
                return LOOM_OK;
            }
        }
    }
    loom_strategy none = {LOOM_SPLIT_NONE, 0, 1};
    if (usable(plan, g, n, match, n_match, &none)) {
        *s = none;
        return LOOM_OK;
    }
    const loom_partition_constraint *pc = loom_constraints_at(plan->constraints, match[0]);
    return loom__error(LOOM_ERR_INVALID,
                       "the partition constraints leave %s in module '%s' no legal strategy "
                       "(constraint at line %d: none of its allowed_partition_dims splits into "
                       "%d parts and replica_allowed is false); allow a dim that divides or "
                       "replication", loom__op_def(n->op)->signature,
                       g->modules[n->module][0] ? g->modules[n->module] : "(top)", pc->line,
                       plan->parts);
}
