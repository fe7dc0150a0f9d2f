// The one-rank executor: binds a program's regions to memory and runs its instructions.

#include "runtime/runner.h"

#include "core/core.h"
#include "loom/train.h"

#include <math.h>
#include <omp.h>
#include <string.h>

loom_status loom__runner_create(loom_program *prog, const loom_backend_i *be, float *params,
                                loom_runner **out) {
    *out = NULL;
    const loom_graph *g = prog->graph;
    loom_runner *r = loom__calloc(1, sizeof *r);
    if (!r) return loom__program_free(prog), LOOM_ERR_NOMEM;
    r->prog = prog;
    r->be = be;
    size_t nv = (size_t)g->n_values, slots = (size_t)prog->micro_batches;
    r->ptr = loom__calloc(nv * slots, sizeof(void *));
    r->batch_src = loom__calloc(nv, sizeof(void *));
    r->micro_loss = loom__calloc(slots, sizeof(float));
    if (!r->ptr || !r->batch_src || !r->micro_loss) goto nomem;
    for (int reg = LOOM_REGION_ARENA; reg < LOOM_REGION_COUNT; reg++) {
        if (reg == LOOM_REGION_PARAM) continue;
        size_t bytes = prog->region_bytes[reg];
        if (!bytes) continue;
        r->region[reg] = loom__malloc_aligned(bytes);
        if (!r->region[reg]) goto nomem;
        memset(r->region[reg], 0, bytes);  // also faults the pages in before the first step
    }
    r->region[LOOM_REGION_PARAM] = params;
    // Kernel scratch: the most any instruction needs, for the threads that will run it.
    r->kernel.threads = omp_get_max_threads();
    for (int i = 0; i < prog->n_instr; i++) {
        const loom_instr *in = &prog->instr[i];
        if (in->kind != LOOM_INSTR_FORWARD && in->kind != LOOM_INSTR_BACKWARD) continue;
        if (in->arg > 0) continue;  // every micro-batch runs the same nodes
        size_t b = be->scratch_bytes(g, &g->nodes[in->node], r->kernel.threads);
        if (b > r->kernel.scratch_bytes) r->kernel.scratch_bytes = b;
    }
    if (r->kernel.scratch_bytes) {
        r->kernel.scratch = loom__malloc_aligned(r->kernel.scratch_bytes);
        if (!r->kernel.scratch) goto nomem;
    }
    for (size_t k = 0; k < nv * slots; k++) {
        int reg = prog->region[k % nv];
        if (reg == LOOM_REGION_NONE) continue;
        r->ptr[k] = (char *)r->region[reg] + prog->offset[k];
    }
    *out = r;
    return LOOM_OK;
nomem:
    loom__runner_free(r);
    return loom__error(LOOM_ERR_NOMEM, "out of memory binding a program (arena %zu bytes)",
                       prog->region_bytes[LOOM_REGION_ARENA]);
}

void loom__runner_free(loom_runner *r) {
    if (!r) return;
    for (int reg = 0; reg < LOOM_REGION_COUNT; reg++)
        if (reg != LOOM_REGION_PARAM) loom__free_aligned(r->region[reg]);
    loom__free_aligned(r->kernel.scratch);
    loom__free_aligned(r->opt_m);
    loom__free_aligned(r->opt_v);
    loom__free(r->ptr);
    loom__free(r->batch_src);
    loom__free(r->micro_loss);
    loom__free(r->norm_skip);
    loom__free(r->events);
    for (int b = 0; b < r->n_buckets; b++)
        if (r->buckets[b].req) loom_comm_wait(r->buckets[b].req);
    loom__free(r->buckets);
    loom__program_free(r->prog);
    loom__free(r);
}

loom_memory_stats loom__runner_memory(const loom_runner *r) {
    const loom_program *p = r->prog;
    return (loom_memory_stats){
        .activations = p->region_bytes[LOOM_REGION_ARENA] + p->region_bytes[LOOM_REGION_PERSIST],
        .parameters = p->region_bytes[LOOM_REGION_PARAM],
        .gradients = p->train ? p->region_bytes[LOOM_REGION_PARAM_GRAD] : 0,
        .optimizer = loom__runner_optimizer_floats(r) * sizeof(float),
        .inputs = p->region_bytes[LOOM_REGION_INPUT],
        .buffers = r->kernel.scratch_bytes};
}

size_t loom__runner_bytes(const loom_runner *r, loom_region region) {
    return r->prog->region_bytes[region];
}

// ---- instructions -------------------------------------------------------------------------------

// The buffers of micro-batch `micro`'s instances.
static void **micro_ptr(const loom_runner *r, int micro) {
    return r->ptr + (size_t)micro * (size_t)r->prog->graph->n_values;
}

static loom_status load_batch(loom_runner *r, int micro) {
    const loom_graph *g = r->prog->graph;
    void **ptr = micro_ptr(r, micro);
    for (int v = 0; v < g->n_values; v++) {
        if (r->prog->region[v] != LOOM_REGION_INPUT) continue;
        if (!r->batch_src[v]) continue;  // written in place by the caller (loom_exec_buffer)
        size_t bytes = loom__value_bytes(g, v);
        memcpy(ptr[v], (const char *)r->batch_src[v] + (size_t)micro * bytes, bytes);
    }
    return LOOM_OK;
}

// A pipeline boundary value (or its gradient) to or from another pipeline rank.
static loom_status point_to_point(loom_runner *r, const loom_instr *in) {
    const loom_graph *g = r->prog->graph;
    void *buf = micro_ptr(r, in->arg)[in->value];
    size_t count = (size_t)loom__value_numel(g, in->value);
    loom_dtype dt = g->values[in->value].dtype;
    if (in->kind == LOOM_INSTR_SEND) return loom_comm_send(r->pipe_comm, buf, count, dt, in->peer, in->tag);
    return loom_comm_recv(r->pipe_comm, buf, count, dt, in->peer, in->tag);
}

// A parameter shared by several pipeline stages (GPT-2's tied wte / lm_head) keeps one value:
// its gradient is the sum of every stage's.
static loom_status tied_sync(loom_runner *r, const loom_instr *in) {
    loom_value gv = r->prog->graph->values[in->value].grad;
    if (gv < 0) return LOOM_OK;
    float *grad = r->ptr[gv];
    size_t n = (size_t)loom__value_numel(r->prog->graph, in->value);
    return loom_comm_all_reduce(r->tied_comms[in->peer], grad, grad, n, LOOM_DTYPE_F32,
                                LOOM_REDUCE_SUM);
}

static float loss_scale(const loom_runner *r) {
    return r->optim.loss_scale > 0 ? r->optim.loss_scale : 1.0f;
}

static size_t param_floats(const loom_runner *r) {
    return r->prog->region_bytes[LOOM_REGION_PARAM] / sizeof(float);
}

// The part of the flat parameter region whose optimizer state this rank keeps: all of it, or
// with ZeRO-1 its 1/size share in its ZeRO group.
static void owned_range(const loom_runner *r, size_t *begin, size_t *len) {
    size_t n = param_floats(r);
    if (!r->zero_comm) {
        *begin = 0, *len = n;
        return;
    }
    size_t parts = (size_t)loom_comm_size(r->zero_comm);
    LOOM_ASSERT(n % parts == 0);  // the region is padded to a multiple (parallel.c)
    *len = n / parts;
    *begin = (size_t)loom_comm_rank(r->zero_comm) * *len;
}

static loom_status sum_over(loom_comm_t c, float *x) {
    if (!c || loom_comm_size(c) == 1) return LOOM_OK;
    return loom_comm_all_reduce(c, x, x, 1, LOOM_DTYPE_F32, LOOM_REDUCE_SUM);
}

// Global gradient norm over all parameters (torch clip_grad_norm_): each rank sums the squares
// of the gradients it owns (its ZeRO share; a replicated gradient on the unit's first rank
// only), then the partial sums are added over the ZeRO group and the unit.
static loom_status clip_grads(loom_runner *r) {
    const loom_program *p = r->prog;
    float *grads = r->region[LOOM_REGION_PARAM_GRAD];
    size_t begin, len;
    owned_range(r, &begin, &len);
    double local = 0;
    if (!r->norm_skip && !r->zero_comm) {
        local = r->be->sum_squares(grads, (int64_t)len);
    } else {
        for (int i = 0; i < p->n_params; i++) {
            if (r->norm_skip && r->norm_skip[i]) continue;
            loom_value v = p->params[i];
            size_t lo = p->offset[v] / sizeof(float), hi = lo + (size_t)loom__value_numel(p->graph, v);
            if (lo < begin) lo = begin;
            if (hi > begin + len) hi = begin + len;
            if (lo < hi) local += r->be->sum_squares(grads + lo, (int64_t)(hi - lo));
        }
    }
    float sumsq = (float)local;
    LOOM_CHECK(sum_over(r->zero_comm, &sumsq));
    if (r->norm_skip) LOOM_CHECK(sum_over(r->norm_comm ? r->norm_comm : r->kernel.comm, &sumsq));
    r->last_grad_norm = sqrtf(sumsq) / loss_scale(r);  // the norm of the unscaled gradients
    return LOOM_OK;
}

// Average the parameter gradients over the data-parallel replicas: one flat all-reduce, or
// with ZeRO-1 and reduce-scatter, a reduce-scatter inside the ZeRO group (plus an all-reduce of
// the share across ZeRO groups).
static loom_status dp_sync(loom_runner *r) {
    if (!r->dp_comm || loom_comm_size(r->dp_comm) == 1) return LOOM_OK;
    float *grads = r->region[LOOM_REGION_PARAM_GRAD];
    size_t n = param_floats(r), begin, len;
    owned_range(r, &begin, &len);
    double t0 = omp_get_wtime();
    if (r->n_buckets) {
        LOOM_CHECK(loom__buckets_finish(r));
    } else if (r->zero_comm && r->zero_reduce_scatter) {
        LOOM_CHECK(loom_comm_reduce_scatter(r->zero_comm, grads, grads + begin, len,
                                            LOOM_DTYPE_F32, LOOM_REDUCE_SUM));
        if (r->zero_cross && loom_comm_size(r->zero_cross) > 1)
            LOOM_CHECK(loom_comm_all_reduce(r->zero_cross, grads + begin, grads + begin, len,
                                            LOOM_DTYPE_F32, LOOM_REDUCE_SUM));
    } else {
        LOOM_CHECK(loom_comm_all_reduce(r->dp_comm, grads, grads, n, LOOM_DTYPE_F32,
                                        LOOM_REDUCE_SUM));
    }
    r->dp_wait_seconds += omp_get_wtime() - t0;
    r->be->scale(grads + begin, 1.0f / (float)loom_comm_size(r->dp_comm), (int64_t)len);
    return LOOM_OK;
}

// Update the owned parameters; with ZeRO-1, then all-gather them inside the ZeRO group.
static loom_status optimizer_step(loom_runner *r) {
    size_t begin, len;
    owned_range(r, &begin, &len);
    float *params = (float *)r->region[LOOM_REGION_PARAM] + begin;
    float *grads = (float *)r->region[LOOM_REGION_PARAM_GRAD] + begin;
    const loom_optim_params *o = &r->optim;
    float scale = 1.0f;
    if (o->grad_clip > 0) {
        float coef = o->grad_clip / (r->last_grad_norm + 1e-6f);
        if (coef < 1.0f) scale = coef;
    }
    scale /= loss_scale(r);
    if (!isfinite(r->last_grad_norm))
        return loom__error(LOOM_ERR_INVALID, "gradient norm is %g at step %lld: the loss "
                           "diverged (lower the learning rate or enable --grad-clip)",
                           (double)r->last_grad_norm, (long long)r->step + 1);
    LOOM_ASSERT(o->kind != 0 || (r->opt_m && r->opt_v));
    r->step++;
    if (o->kind == 0)
        r->be->adamw(params, grads, r->opt_m, r->opt_v, (int64_t)len, o->lr, o->beta1, o->beta2,
                     o->eps, o->weight_decay, r->step, scale);
    else
        r->be->sgd(params, grads, r->opt_m, (int64_t)len, o->lr,
                   o->momentum, o->weight_decay, r->step, scale);
    if (r->zero_comm)
        LOOM_CHECK(loom_comm_all_gather(r->zero_comm, params, r->region[LOOM_REGION_PARAM], len,
                                        LOOM_DTYPE_F32));
    return LOOM_OK;
}

loom_status loom__runner_set_optimizer(loom_runner *r, const loom_optim_params *o) {
    size_t begin, n;
    owned_range(r, &begin, &n);
    r->optim = *o;
    loom__free_aligned(r->opt_m);
    loom__free_aligned(r->opt_v);
    r->opt_m = r->opt_v = NULL;
    // Zeroed state (pages faulted in now, not during the first step).
    int adamw = o->kind == 0, moments = adamw || o->momentum != 0;
    if (moments) r->opt_m = loom__malloc_aligned(n * sizeof(float));
    if (adamw) r->opt_v = loom__malloc_aligned(n * sizeof(float));
    if ((moments && !r->opt_m) || (adamw && !r->opt_v))
        return loom__error(LOOM_ERR_NOMEM, "out of memory for optimizer state (%zu parameters)", n);
    if (r->opt_m) memset(r->opt_m, 0, n * sizeof(float));
    if (r->opt_v) memset(r->opt_v, 0, n * sizeof(float));
    r->step = 0;
    return LOOM_OK;
}

size_t loom__runner_optimizer_floats(const loom_runner *r) {
    size_t begin, len;
    owned_range(r, &begin, &len);
    int adamw = r->optim.kind == 0, moments = adamw || r->optim.momentum != 0;
    return len * (size_t)(adamw + moments);
}

// Tracing is a diagnostic: its event log grows as needed (the only allocation in a step).
static loom_status record_event(loom_runner *r, int instr, double start, double end) {
    if (r->n_events == r->cap_events) {
        int cap = r->cap_events ? 2 * r->cap_events : 4096;
        loom_trace_event *e = loom__realloc(r->events, (size_t)cap * sizeof *e);
        if (!e) return LOOM_ERR_NOMEM;
        r->events = e;
        r->cap_events = cap;
    }
    r->events[r->n_events++] = (loom_trace_event){instr, start, end};
    return LOOM_OK;
}

loom_status loom__runner_run(loom_runner *r) {
    const loom_program *p = r->prog;
    const loom_graph *g = p->graph;
    r->loss_sum = 0;
    r->dp_wait_seconds = 0;
    for (int i = 0; i < p->n_instr; i++) {
        const loom_instr *in = &p->instr[i];
        double t0 = r->profile || r->trace ? omp_get_wtime() : 0;
        switch (in->kind) {
        case LOOM_INSTR_ZERO_GRADS:
            if (p->region_bytes[LOOM_REGION_PARAM_GRAD])  // a graph may have no parameters
                memset(r->region[LOOM_REGION_PARAM_GRAD], 0, p->region_bytes[LOOM_REGION_PARAM_GRAD]);
            break;
        case LOOM_INSTR_LOAD_BATCH: LOOM_CHECK(load_batch(r, in->arg)); break;
        case LOOM_INSTR_SEED_GRAD:
            *(float *)r->ptr[g->values[p->loss].grad] = loss_scale(r) * p->seed;
            break;
        case LOOM_INSTR_RECORD_LOSS:
            r->micro_loss[in->arg] = *(const float *)r->ptr[p->loss];
            r->loss_sum += r->micro_loss[in->arg];
            break;
        case LOOM_INSTR_FORWARD:
            LOOM_CHECK(r->be->forward(g, &g->nodes[in->node], micro_ptr(r, in->arg), &r->kernel));
            break;
        case LOOM_INSTR_BACKWARD:
            LOOM_CHECK(r->be->backward(g, &g->nodes[in->node], in->acc_mask,
                                       micro_ptr(r, in->arg), &r->kernel));
            if (r->n_buckets) LOOM_CHECK(loom__buckets_start(r, i));
            break;
        case LOOM_INSTR_SEND:
        case LOOM_INSTR_RECV: LOOM_CHECK(point_to_point(r, in)); break;
        case LOOM_INSTR_TIED_SYNC:
            LOOM_CHECK(tied_sync(r, in));
            if (r->n_buckets) LOOM_CHECK(loom__buckets_start(r, i));
            break;
        case LOOM_INSTR_DP_SYNC: LOOM_CHECK(dp_sync(r)); break;
        case LOOM_INSTR_CLIP_GRADS: LOOM_CHECK(clip_grads(r)); break;
        case LOOM_INSTR_OPTIMIZER_STEP:
            if (!r->skip_update) LOOM_CHECK(optimizer_step(r));
            break;
        case LOOM_INSTR_COUNT: LOOM_ASSERT(0);
        }
        if (r->trace) LOOM_CHECK(record_event(r, i, t0, omp_get_wtime()));
        if (r->profile) {
            double dt = omp_get_wtime() - t0;
            r->instr_seconds[in->kind] += dt;
            if (in->node >= 0) r->op_seconds[g->nodes[in->node].op][in->kind == LOOM_INSTR_BACKWARD] += dt;
        }
    }
    return LOOM_OK;
}
