// Gradient buckets: the data-parallel all-reduce of the parameter gradients, started bucket by
// bucket during the last micro-batch's backward as soon as a bucket's gradients are final, so
// communication overlaps the rest of the backward pass (PyTorch DDP's bucketing).

#include "runtime/runner.h"

#include "core/core.h"

#include <string.h>

loom_status loom__runner_enable_buckets(loom_runner *r, size_t bucket_bytes) {
    const loom_program *p = r->prog;
    const loom_graph *g = p->graph;
    if (!r->dp_comm || loom_comm_size(r->dp_comm) == 1 || p->n_params == 0) return LOOM_OK;
    // The last instruction that adds into each parameter's gradient.
    int *last = loom__malloc((size_t)p->n_params * sizeof(int));
    r->buckets = loom__calloc((size_t)p->n_params, sizeof *r->buckets);
    if (!last || !r->buckets) {
        loom__free(last);
        return LOOM_ERR_NOMEM;
    }
    for (int i = 0; i < p->n_params; i++) last[i] = -1;
    for (int k = 0; k < p->n_instr; k++) {
        const loom_instr *in = &p->instr[k];
        if (in->kind == LOOM_INSTR_TIED_SYNC) {  // the stages' sum is the last write
            for (int i = 0; i < p->n_params; i++)
                if (p->params[i] == in->value) last[i] = k;
            continue;
        }
        if (in->kind != LOOM_INSTR_BACKWARD) continue;
        const loom_node *n = &g->nodes[in->node];
        for (int o = 0; o < n->n_out; o++) {
            if (n->out[o] < 0 || p->region[n->out[o]] != LOOM_REGION_PARAM_GRAD) continue;
            for (int i = 0; i < p->n_params; i++)
                if (g->values[p->params[i]].grad == n->out[o]) last[i] = k;
        }
    }
    // Walk the parameters from the end of the flat region (the backward reaches the last layers
    // first), closing a bucket once it holds bucket_bytes; a bucket's range is contiguous.
    size_t region = p->region_bytes[LOOM_REGION_PARAM] / sizeof(float);
    size_t end = region, bytes;
    int ready = -1;
    for (int i = p->n_params - 1; i >= 0; i--) {
        size_t begin = p->offset[p->params[i]] / sizeof(float);
        bytes = (end - begin) * sizeof(float);
        if (last[i] > ready) ready = last[i];
        if (bytes >= bucket_bytes || i == 0) {
            size_t from = i == 0 ? 0 : begin;
            r->buckets[r->n_buckets++] = (loom_grad_bucket){from, end - from, ready, NULL};
            end = from, ready = -1;
        }
    }
    loom__free(last);
    return LOOM_OK;
}

loom_status loom__buckets_start(loom_runner *r, int instr) {
    float *grads = r->region[LOOM_REGION_PARAM_GRAD];
    for (int b = 0; b < r->n_buckets; b++) {
        loom_grad_bucket *k = &r->buckets[b];
        if (k->ready != instr || k->req) continue;
        LOOM_CHECK(loom_comm_all_reduce_async(r->dp_comm, grads + k->begin, grads + k->begin,
                                              k->len, LOOM_DTYPE_F32, LOOM_REDUCE_SUM, &k->req));
    }
    return LOOM_OK;
}

loom_status loom__buckets_finish(loom_runner *r) {
    loom_status first = LOOM_OK;
    for (int b = 0; b < r->n_buckets; b++) {
        loom_grad_bucket *k = &r->buckets[b];
        loom_status st = LOOM_OK;
        // A bucket whose gradients were last written before the final micro-batch starts here.
        if (!k->req) st = loom__buckets_start(r, k->ready);
        if (st == 0 && k->req) st = loom_comm_wait(k->req);
        k->req = NULL;
        if (first == 0) first = st;
    }
    return first;
}
