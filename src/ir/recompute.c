// Recomputation (activation checkpointing): the forward nodes of chosen modules get clones that
// run again during the backward, and their backward nodes read the clones, so the originals'
// activations die right after the forward. Kernels are deterministic, so the recomputed values
// are bit-identical to the first ones.

#include "ir/ir.h"

#include "core/core.h"
#include "loom/constraints.h"

#include <ctype.h>
#include <string.h>

// Shared with the pipeline stage assignment (declared in ir.h), so that "layers" means the
// same numbered prefixes for recomputation and for pipeline cuts.
int loom__module_prefix(const char *path, const char *pattern, char *buf, size_t cap) {
    size_t n = strlen(path);
    for (size_t end = 0; end <= n; end++) {
        if (end < n && path[end] != '.') continue;
        if (end >= cap || end == 0) continue;
        memcpy(buf, path, end);
        buf[end] = '\0';
        if (!strcmp(pattern, "layers")) {
            const char *last = strrchr(buf, '.');
            last = last ? last + 1 : buf;
            int digits = *last != '\0';
            for (const char *c = last; *c; c++) digits &= isdigit((unsigned char)*c) != 0;
            if (digits) return 1;
        } else if (loom_module_matches(buf, pattern)) {
            return 1;
        }
    }
    return 0;
}

loom_status loom_graph_recompute(loom_graph_t g, const char *spec) {
    return loom__graph_recompute(g, spec, 1);
}

int loom__recompute_matches(const loom_graph *g, const char *spec) {
    char prefix[256], pattern[256];
    for (int i = 0; i < g->n_nodes; i++) {
        for (const char *p = spec; p && *p;) {
            size_t len = strcspn(p, ",");
            snprintf(pattern, sizeof pattern, "%.*s", (int)len, p);
            p += len + (p[len] == ',');
            if (pattern[0] && loom__module_prefix(g->modules[g->nodes[i].module], pattern, prefix,
                                                  sizeof prefix))
                return 1;
        }
    }
    return 0;
}

loom_status loom__graph_recompute(loom_graph_t g, const char *spec, int require_match) {
    if (g->status) return g->status;
    if (!g->has_backward)
        return loom__error(LOOM_ERR_INVALID, "recompute: the graph has no backward pass yet");
    if (!spec || !*spec) return LOOM_OK;
    const int n0 = g->n_nodes;  // clones are appended after these
    int32_t *group = loom__malloc((size_t)g->n_nodes * sizeof(int32_t));
    int32_t *clone = loom__malloc((size_t)g->n_nodes * sizeof(int32_t));
    int32_t *value_clone = loom__malloc((size_t)g->n_values * sizeof(int32_t));
    char (*names)[256] = loom__calloc((size_t)g->n_nodes, 256);
    if (!group || !clone || !value_clone || !names) {
        loom__free(group), loom__free(clone), loom__free(value_clone), loom__free(names);
        return LOOM_ERR_NOMEM;
    }
    int n_groups = 0, matched_any = 0;
    loom_status st = LOOM_OK;
    // Which group each forward node belongs to (by the spec's first pattern that names one).
    for (int i = 0; i < n0; i++) {
        group[i] = clone[i] = -1;
        if (g->nodes[i].backward || g->nodes[i].recompute_group >= 0) continue;
        char prefix[256], pattern[256];
        const char *p = spec;
        while (*p && group[i] < 0) {
            size_t len = strcspn(p, ",");
            snprintf(pattern, sizeof pattern, "%.*s", (int)len, p);
            p += len + (p[len] == ',');
            if (!pattern[0] || !loom__module_prefix(g->modules[g->nodes[i].module], pattern,
                                                    prefix, sizeof prefix))
                continue;
            int k = 0;
            while (k < n_groups && strcmp(names[k], prefix) != 0) k++;
            if (k == n_groups) snprintf(names[n_groups++], 256, "%s", prefix);
            group[i] = k;
            matched_any = 1;
        }
    }
    if (!matched_any && !require_match) goto done;  // a pipeline stage without such modules
    if (!matched_any) {
        st = loom__error(LOOM_ERR_INVALID, "recompute '%s' names no module of this model (module "
                         "names match path suffixes, e.g. 'attn' or 'h.3'; 'layers' means every "
                         "numbered layer)", spec);
        goto done;
    }
    // Clone each group's nodes in order, reading earlier clones of the same group.
    for (int v = 0; v < g->n_values; v++) value_clone[v] = -1;
    for (int i = 0; i < n0 && st == 0; i++) {
        if (group[i] < 0) continue;
        loom_node c = g->nodes[i];
        for (int k = 0; k < c.n_in; k++) {
            int32_t producer = g->values[c.in[k]].producer;
            if (producer >= 0 && producer < n0 && group[producer] == group[i] &&
                value_clone[c.in[k]] >= 0)
                c.in[k] = value_clone[c.in[k]];
        }
        for (int o = 0; o < c.n_out; o++) {
            loom_value orig = g->nodes[i].out[o];
            int64_t shape[LOOM_MAX_DIMS];
            memcpy(shape, g->values[orig].shape, sizeof shape);
            loom_value v = loom__graph_add_value(g, NULL, g->values[orig].dtype,
                                                 g->values[orig].ndim, shape, LOOM_ROLE_ACTIVATION);
            if (v == LOOM_NONE) {
                st = g->status;
                break;
            }
            g->values[v].producer = g->n_nodes;
            value_clone[orig] = v;
            c.out[o] = v;
        }
        if (st < 0) break;
        c.recompute_group = group[i];
        clone[i] = loom__graph_push_node(g, &c);
        if (clone[i] < 0) st = g->status;
    }
    // The group's backward nodes read the clones.
    for (int i = 0; i < n0 && st == 0; i++) {
        loom_node *n = &g->nodes[i];
        if (n->backward && group[n->fwd] >= 0 && clone[n->fwd] >= 0) n->fwd = clone[n->fwd];
    }
done:
    loom__free(group), loom__free(clone), loom__free(value_clone), loom__free(names);
    return st;
}
