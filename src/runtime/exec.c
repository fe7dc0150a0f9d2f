// Generic executor for graphs built with the C API: one program, executor-owned parameters.

#include "loom/exec.h"

#include "core/core.h"
#include "runtime/runner.h"

#include <string.h>

struct loom_exec {
    loom_graph_t graph;
    float *params;
    loom_runner *runner;
};

loom_status loom_exec_create(loom_graph_t g, loom_exec_t *out) {
    *out = NULL;
    loom_exec_t e = loom__calloc(1, sizeof *e);
    if (!e) return LOOM_ERR_NOMEM;
    e->graph = g;
    loom_program *prog = NULL;
    loom_lower_options lo = {.train = g->has_backward, .micro_batches = 1};
    loom_status st = loom__lower(g, &lo, &prog);
    if (st < 0) goto fail;
    size_t bytes = prog->region_bytes[LOOM_REGION_PARAM];
    e->params = loom__malloc_aligned(bytes);
    if (!e->params) {
        loom__program_free(prog);
        st = LOOM_ERR_NOMEM;
        goto fail;
    }
    memset(e->params, 0, bytes);
    st = loom__runner_create(prog, loom__backend_cpu(), e->params, &e->runner);
    if (st < 0) goto fail;
    e->runner->skip_update = 1;
    *out = e;
    return LOOM_OK;
fail:
    loom_exec_free(e);
    return st;
}

void loom_exec_free(loom_exec_t e) {
    if (!e) return;
    loom__runner_free(e->runner);
    loom__free_aligned(e->params);
    loom__free(e);
}

loom_status loom_exec_buffer(loom_exec_t e, loom_value v, void **data) {
    *data = NULL;
    const loom_program *p = e->runner->prog;
    if (v < 0 || v >= e->graph->n_values)
        return loom__error(LOOM_ERR_INVALID, "loom_exec_buffer: %d is not a value of the graph", v);
    int r = p->region[v];
    if (r == LOOM_REGION_NONE || r == LOOM_REGION_ARENA)
        return loom__error(LOOM_ERR_INVALID, "loom_exec_buffer: value '%s' is %s; mark it with "
                           "loom_graph_mark_output to read it after a run",
                           e->graph->values[v].name,
                           r == LOOM_REGION_NONE ? "not used by the program" : "a temporary");
    *data = e->runner->ptr[v];
    return LOOM_OK;
}

loom_status loom_exec_run(loom_exec_t e) { return loom__runner_run(e->runner); }
