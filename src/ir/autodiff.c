// Generic reverse-mode autodiff: one backward node per forward node on the path to the loss.
//
// Each backward node reads the gradients of its forward node's outputs and the saved tensors the
// op table lists, and produces the gradients of the forward inputs. A gradient value that several
// backward nodes produce is an accumulator: the first producer in program order writes it, the
// later ones add into it (decided at lowering), so no extra add nodes are needed.

#include "ir/ir.h"

#include "core/core.h"

#include <stdio.h>
#include <string.h>

static loom_value make_grad(loom_graph *g, loom_value v) {
    if (g->values[v].grad >= 0) return g->values[v].grad;
    char name[512];
    snprintf(name, sizeof name, "grad.%s", g->values[v].name);
    int64_t shape[LOOM_MAX_DIMS];  // copied: adding a value may move the value array
    memcpy(shape, g->values[v].shape, sizeof shape);
    loom_value gv = loom__graph_add_value(g, name, LOOM_DTYPE_F32, g->values[v].ndim, shape,
                                          LOOM_ROLE_GRADIENT);
    if (gv == LOOM_NONE) return LOOM_NONE;
    g->values[gv].grad_of = v;
    g->values[v].grad = gv;
    return gv;
}

loom_status loom_graph_backward(loom_graph_t g, loom_value loss) {
    if (g->status) return g->status;
    if (loss < 0 || loss >= g->n_values || loom__value_numel(g, loss) != 1 ||
        g->values[loss].dtype != LOOM_DTYPE_F32)
        return loom__error(LOOM_ERR_INVALID, "loom_graph_backward: the loss must be a scalar fp32 "
                                             "value of the graph");
    return loom__graph_backward_seeded(g, loss, 0, NULL);
}

loom_status loom__graph_backward_seeded(loom_graph_t g, loom_value loss, int n_seeds,
                                        const loom_value *seeds) {
    if (g->status) return g->status;
    if (g->has_backward)
        return loom__error(LOOM_ERR_INVALID, "loom_graph_backward: the graph already has a "
                                             "backward pass");
    int n_fwd = g->n_nodes;
    bool *requires = loom__calloc((size_t)g->n_values, sizeof(bool));
    if (!requires) return LOOM_ERR_NOMEM;
    // Forward pass: which values depend on a parameter (or on an input that wants a gradient).
    for (int v = 0; v < g->n_values; v++)
        requires[v] = g->values[v].role == LOOM_ROLE_PARAM || g->values[v].requires_grad;
    for (int i = 0; i < n_fwd; i++) {
        const loom_node *n = &g->nodes[i];
        bool any = false;
        for (int k = 0; k < n->n_in; k++)
            any |= requires[n->in[k]] && (loom__op_def(n->op)->grad_inputs >> k & 1);
        for (int o = 0; o < n->n_out; o++) requires[n->out[o]] = any;
    }
    loom_status st = LOOM_OK;
    if (loss >= 0 && !requires[loss] && n_seeds == 0) {
        st = loom__error(LOOM_ERR_INVALID, "loom_graph_backward: the loss does not depend on any "
                                           "parameter");
        goto done;
    }
    g->loss = loss;
    if (loss >= 0 && make_grad(g, loss) == LOOM_NONE) goto fail;
    for (int k = 0; k < n_seeds; k++) {
        if (!requires[seeds[k]]) {
            st = loom__error(LOOM_ERR_INTERNAL, "autodiff: seed '%s' depends on no parameter",
                             g->values[seeds[k]].name);
            goto done;
        }
        if (make_grad(g, seeds[k]) == LOOM_NONE) goto fail;
    }
    for (int i = n_fwd - 1; i >= 0; i--) {
        loom_node n = g->nodes[i];  // copy: pushing nodes may move the array
        const loom_op_def *def = loom__op_def(n.op);
        bool has_out_grad = false;
        for (int o = 0; o < n.n_out; o++) has_out_grad |= g->values[n.out[o]].grad >= 0;
        if (!has_out_grad) continue;
        bool wants = false;
        for (int k = 0; k < n.n_in; k++)
            wants |= requires[n.in[k]] && (def->grad_inputs >> k & 1);
        if (!wants) continue;
        if (def->flags & LOOM_OPF_NO_BACKWARD) {
            st = loom__error(LOOM_ERR_UNSUPPORTED, "%s in module '%s' has no backward pass "
                             "(inference-only op on the path to the loss)", def->signature,
                             g->modules[n.module]);
            goto done;
        }
        loom_node b;
        memset(&b, 0, sizeof b);
        b.op = n.op;
        b.backward = true;
        b.fwd = i;
        b.recompute_group = -1;
        b.n_in = n.n_out;
        b.n_out = n.n_in;
        memcpy(b.ai, n.ai, sizeof b.ai);
        memcpy(b.af, n.af, sizeof b.af);
        b.module = n.module;
        b.stage = n.stage;
        for (int o = 0; o < n.n_out; o++) b.in[o] = g->values[n.out[o]].grad;
        for (int k = 0; k < n.n_in; k++) {
            b.out[k] = -1;
            if (requires[n.in[k]] && (def->grad_inputs >> k & 1)) {
                b.out[k] = make_grad(g, n.in[k]);
                if (b.out[k] == LOOM_NONE) goto fail;
            }
        }
        if (loom__graph_push_node(g, &b) < 0) goto fail;
    }
    g->has_backward = true;
    goto done;
fail:
    st = g->status ? g->status : LOOM_ERR_NOMEM;
done:
    loom__free(requires);
    return st;
}
