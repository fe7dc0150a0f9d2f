// Text dump of a graph: one line per node with its op, module path, values and annotation.

#include "ir/ir.h"

#include "core/core.h"

static void print_value(FILE *f, const loom_graph *g, loom_value v) {
    if (v < 0) {
        fputs("-", f);
        return;
    }
    const loom_value_info *vi = &g->values[v];
    fprintf(f, "%s:%s[", vi->name, loom_dtype_name(vi->dtype));
    for (int i = 0; i < vi->ndim; i++) fprintf(f, "%s%lld", i ? "," : "", (long long)vi->shape[i]);
    fputc(']', f);
}

static void print_values(FILE *f, const loom_graph *g, int n, const int32_t *vals) {
    for (int i = 0; i < n; i++) {
        if (i) fputs(", ", f);
        print_value(f, g, vals[i]);
    }
}

loom_status loom_graph_dump(loom_graph_t g, FILE *f) {
    int counts[LOOM_ROLE_COUNT] = {0};
    for (int v = 0; v < g->n_values; v++) counts[g->values[v].role]++;
    fprintf(f, "graph: %d nodes, %d values (", g->n_nodes, g->n_values);
    for (int r = 0; r < LOOM_ROLE_COUNT; r++)
        fprintf(f, "%s%d %s", r ? ", " : "", counts[r], loom_role_name((loom_role)r));
    fputs(")\n", f);
    for (int v = 0; v < g->n_values; v++) {
        loom_role r = g->values[v].role;
        if (r != LOOM_ROLE_INPUT && r != LOOM_ROLE_PARAM && r != LOOM_ROLE_STATE) continue;
        fprintf(f, "  %-5s ", loom_role_name(r));
        print_value(f, g, v);
        fputc('\n', f);
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const loom_node *n = &g->nodes[i];
        const loom_op_def *def = loom__op_def(n->op);
        const char *module = g->modules[n->module];
        fprintf(f, "%4d %s%s  @%s  (", i, def->signature,
                n->backward ? ".backward" : n->recompute_group >= 0 ? ".recompute" : "",
                module[0] ? module : "(top)");
        print_values(f, g, n->n_in, n->in);
        fputs(") -> (", f);
        print_values(f, g, n->n_out, n->out);
        if (n->backward) fprintf(f, ")  of node %d\n", n->fwd);
        else fprintf(f, ")  \"%s\"\n", def->annotation);
    }
    return ferror(f) ? loom__error(LOOM_ERR_IO, "graph dump: write failed") : LOOM_OK;
}
