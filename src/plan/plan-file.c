// JSON plan files: per-op split decisions keyed by module path and op signature.

#include "plan/plan.h"

#include "core/core.h"

#include <jansson.h>
#include <string.h>

typedef struct plan_entry {
    const char *module, *op;
    int verdict;  // 1 split, 0 replicate, -1 follow
    int input, dim;
    int used;
} plan_entry;

struct loom_plan_file {
    json_t *root;
    int n;
    plan_entry *entries;
};

void loom__plan_file_free(loom_plan_file *f) {
    if (!f) return;
    json_decref(f->root);
    loom__free(f->entries);
    loom__free(f);
}

int loom__plan_split_parse(const json_t *split, int *input, int *dim) {
    const char *word = json_string_value(split);
    if (word && !strcmp(word, "replicate")) return 0;
    if (word && !strcmp(word, "follow")) return -1;
    if (!json_is_array(split) || json_array_size(split) != 2 ||
        !json_is_integer(json_array_get(split, 0)) || !json_is_integer(json_array_get(split, 1)))
        return LOOM_PLAN_SPLIT_BAD;
    *input = (int)json_integer_value(json_array_get(split, 0));
    *dim = (int)json_integer_value(json_array_get(split, 1));
    return 1;
}

json_t *loom__plan_split_json(int verdict, int input, int dim) {
    if (verdict > 0) return json_pack("[i, i]", input, dim);
    return json_string(verdict == 0 ? "replicate" : "follow");
}

int loom__strategy_verdict(const loom_graph *g, const loom_node *n, const loom_strategy *s,
                           int parts, int *input, int *dim) {
    *input = *dim = 0;
    if (s->id == LOOM_SPLIT_FOLLOW) return -1;
    return loom__strategy_split_dim(g, n, s, parts, input, dim);
}

static loom_status entry_error(const char *path, size_t i, const char *what) {
    return loom__error(LOOM_ERR_FORMAT, "%s: ops[%zu]: %s", path, i, what);
}

loom_status loom__plan_file_load(const char *path, const loom_graph *g, loom_plan_file **out) {
    *out = NULL;
    (void)g;
    if (!path) return loom__error(LOOM_ERR_INVALID, "the file policy needs a plan file");
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root)
        return loom__error(err.line < 0 ? LOOM_ERR_IO : LOOM_ERR_FORMAT,
                           "%s: line %d, column %d: %s", path, err.line, err.column, err.text);
    loom_plan_file *f = loom__calloc(1, sizeof *f);
    if (!f) return json_decref(root), LOOM_ERR_NOMEM;
    f->root = root;
    json_t *ops = json_object_get(root, "ops");
    loom_status st = LOOM_OK;
    if (!json_is_object(root) || !json_is_array(ops)) {
        st = loom__error(LOOM_ERR_FORMAT, "%s: expected {\"ops\": [...]}", path);
        goto fail;
    }
    f->n = (int)json_array_size(ops);
    f->entries = loom__calloc((size_t)(f->n ? f->n : 1), sizeof(plan_entry));
    if (!f->entries) {
        st = LOOM_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < json_array_size(ops); i++) {
        json_t *e = json_array_get(ops, i), *split = json_object_get(e, "split");
        plan_entry *pe = &f->entries[i];
        pe->module = json_string_value(json_object_get(e, "module"));
        pe->op = json_string_value(json_object_get(e, "op"));
        if (!json_is_object(e) || !pe->module || !pe->op) {
            st = entry_error(path, i, "needs string fields \"module\" and \"op\"");
            goto fail;
        }
        pe->verdict = loom__plan_split_parse(split, &pe->input, &pe->dim);
        if (pe->verdict == LOOM_PLAN_SPLIT_BAD) {
            st = entry_error(path, i, "\"split\" must be [input, dim], \"replicate\" or \"follow\"");
            goto fail;
        }
    }
    *out = f;
    return LOOM_OK;
fail:
    loom__plan_file_free(f);
    return st;
}

int loom__plan_file_lookup(loom_plan_file *f, const loom_graph *g, int node, int *input,
                           int *dim) {
    const loom_node *n = &g->nodes[node];
    const char *module = g->modules[n->module], *op = loom__op_def(n->op)->signature;
    for (int i = 0; f && i < f->n; i++) {
        plan_entry *pe = &f->entries[i];
        if (strcmp(pe->module, module) != 0 || strcmp(pe->op, op) != 0) continue;
        pe->used = 1;
        *input = pe->input, *dim = pe->dim;
        return pe->verdict;
    }
    return -1;
}

loom_status loom__plan_file_unused(const loom_plan_file *f, const char *path) {
    for (int i = 0; f && i < f->n; i++)
        if (!f->entries[i].used)
            return loom__error(LOOM_ERR_INVALID, "%s: ops[%d] (module '%s', op '%s') matches no "
                               "op of this model: the plan was made for another model; see "
                               "'loom graph' for its ops and module paths", path, i,
                               f->entries[i].module, f->entries[i].op);
    return LOOM_OK;
}
