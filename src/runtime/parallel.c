// Parallel training on the `local` communicator: every rank is a thread with its own local
// graph, per-rank program, runner and parameter shards. Rank = unit index * unit size + index
// inside the unit; the unit's ranks split the model by the plan, the units run data parallel.

#include "loom/parallel.h"

#include "core/core.h"
#include "models/family.h"
#include "plan/plan.h"
#include "plan/shard.h"
#include "runtime/parallel-impl.h"

#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const policy_names[] = {"dp", "tp", "data", "custom", "file", "pp",
                                             "hybrid"};

const char *loom_policy_name(loom_policy p) {
    return (unsigned)p < LOOM_POLICY_COUNT ? policy_names[p] : "?";
}

int loom_policy_from_name(const char *name) {
    for (int i = 0; i < LOOM_POLICY_COUNT; i++)
        if (!strcmp(name, policy_names[i])) return i;
    return -1;
}

loom_compute_config loom_compute_config_default(void) {
    return (loom_compute_config){.plan_ndevices = 1, .runtime_ndevices = 1,
                                 .policy = LOOM_POLICY_DP, .zero_ngroups = 1,
                                 .zero_reduce_scatter = 1, .async_reducer = 1,
                                 .bucket_bytes = 25u << 20, .comm = LOOM_COMM_LOCAL,
                                 .timeout_s = 60.0, .pipeline_nstages = 1,
                                 .pipeline_nmicros = 1};
}

int loom_parallel_nranks(loom_parallel_t p) { return p->nranks; }
int loom_parallel_rank(loom_parallel_t p) { return p->ranks[0].rank; }
int64_t loom_parallel_steps_done(loom_parallel_t p) { return p->ranks[0].runner->step; }

// ---- running one function on every rank's thread -------------------------------------------------

typedef struct rank_job {
    rank_state *rs;
    loom__rank_fn fn;
} rank_job;

static void *rank_main(void *arg) {
    rank_job *job = arg;
    rank_state *rs = job->rs;
    omp_set_num_threads(rs->par->threads_per_rank);
    rs->status = job->fn(rs);
    if (rs->status < 0) {
        snprintf(rs->error, sizeof rs->error, "%s", loom_last_error());
        // The others must not wait for this rank forever.
        loom_comm_t comms[] = {rs->world, rs->unit_comm, rs->dp_comm, rs->zero_comm,
                               rs->zero_cross};
        for (size_t k = 0; k < sizeof comms / sizeof comms[0]; k++)
            if (comms[k]) loom_comm_abort(comms[k], rs->error);
    }
    return NULL;
}

// Run fn on every rank this process holds, concurrently; the first failing rank's message
// becomes the error.
loom_status loom__run_ranks(loom_parallel_t p, loom__rank_fn fn) {
    if (p->cc.comm == LOOM_COMM_MPI) {
        rank_job job = {&p->ranks[0], fn};
        rank_main(&job);
        if (p->ranks[0].status < 0)
            return loom__error(p->ranks[0].status, "rank %d: %s", p->ranks[0].rank,
                               p->ranks[0].error);
        return LOOM_OK;
    }
    pthread_t *threads = loom__calloc((size_t)p->nranks, sizeof(pthread_t));
    rank_job *jobs = loom__calloc((size_t)p->nranks, sizeof(rank_job));
    if (!threads || !jobs) {
        loom__free(threads), loom__free(jobs);
        return LOOM_ERR_NOMEM;
    }
    int started = 0;
    for (int r = 0; r < p->nranks; r++) {
        jobs[r] = (rank_job){&p->ranks[r], fn};
        if (pthread_create(&threads[r], NULL, rank_main, &jobs[r]) != 0) break;
        started++;
    }
    // Ranks that did start must not wait for the missing ones until the timeout.
    if (started < p->nranks && started > 0) loom_comm_abort(p->ranks[started].world, "not started");
    for (int r = 0; r < started; r++) pthread_join(threads[r], NULL);
    loom__free(threads), loom__free(jobs);
    if (started < p->nranks)
        return loom__error(LOOM_ERR_INTERNAL, "could not start %d rank threads", p->nranks);
    // Report the root cause: a rank that failed on its own, not one that saw another fail.
    int first = -1;
    for (int r = 0; r < p->nranks; r++)
        if (p->ranks[r].status < 0 && (first < 0 || (p->ranks[first].status == LOOM_ERR_COMM &&
                                                     p->ranks[r].status != LOOM_ERR_COMM)))
            first = r;
    if (first >= 0)
        return loom__error(p->ranks[first].status, "rank %d: %s", first, p->ranks[first].error);
    return LOOM_OK;
}

// ---- setup ----------------------------------------------------------------------------------------

static const loom_local_leaf *find_leaf(const rank_state *rs, loom_value global) {
    for (int i = 0; i < rs->lg.n_leaves; i++)
        if (rs->lg.leaves[i].global == global) return &rs->lg.leaves[i];
    return NULL;
}

// Copy the rank's parameter shards from the model's full tensors.
static void load_params(rank_state *rs) {
    loom_parallel_t p = rs->par;
    const loom_graph *lg = rs->lg.graph;
    for (int i = 0; i < rs->lg.n_leaves; i++) {
        const loom_local_leaf *leaf = &rs->lg.leaves[i];
        const loom_value_info *gv = &p->global->values[leaf->global];
        if (gv->role != LOOM_ROLE_PARAM) continue;
        float *full = NULL;
        loom_status st = loom_model_tensor(p->model, gv->name, &full, NULL);
        LOOM_ASSERT(st == 0);
        float *local = rs->runner->ptr[leaf->local];
        if (leaf->place.kind == LOOM_PLACE_SHARD) {
            loom_shard_layout l = loom__shard_layout(gv->ndim, gv->shape, leaf->place.dim,
                                                     leaf->place.chunks, p->parts);
            loom__shard_copy(&l, rs->index, local, full, 1, 0);
        } else {
            memcpy(local, full, loom__value_bytes(lg, leaf->local));
        }
    }
}

// Merge the unit-0 ranks' shards into the model's full tensors (on the process holding rank 0;
// collective over unit 0).
loom_status loom__gather_full(rank_state *rs, const loom_local_leaf *leaf, const float *local,
                              float *full) {
    const loom_value_info *gv = &rs->par->global->values[leaf->global];
    int64_t n = loom__value_numel(rs->lg.graph, leaf->local), parts = rs->par->parts;
    if (leaf->place.kind != LOOM_PLACE_SHARD) {
        if (rs->index == 0) memcpy(full, local, (size_t)n * sizeof(float));
        return LOOM_OK;
    }
    float *staged = loom__malloc((size_t)(n * parts) * sizeof(float));
    if (!staged) return LOOM_ERR_NOMEM;
    loom_status st = loom_comm_all_gather(rs->unit_comm, local, staged, (size_t)n, LOOM_DTYPE_F32);
    if (st == 0 && rs->index == 0) {
        loom_shard_layout l = loom__shard_layout(gv->ndim, gv->shape, leaf->place.dim,
                                                 leaf->place.chunks, (int)parts);
        for (int r = 0; r < parts; r++) loom__shard_copy(&l, r, staged + r * n, full, 0, 0);
    }
    loom__free(staged);
    return st;
}

int loom__shard_block(const rank_state *rs, const loom_local_leaf *leaf, int64_t *offset,
                      int64_t *shape) {
    const loom_value_info *gv = &rs->par->global->values[leaf->global];
    memset(offset, 0, LOOM_MAX_DIMS * sizeof(int64_t));
    memcpy(shape, gv->shape, sizeof gv->shape);
    const loom_placement *pl = &leaf->place;
    if (pl->kind != LOOM_PLACE_SHARD || pl->chunks != 1) return 0;
    shape[pl->dim] /= rs->par->parts;
    offset[pl->dim] = rs->index * shape[pl->dim];
    return 1;
}

static loom_status rank_merge(rank_state *rs) {
    loom_parallel_t p = rs->par;
    if (rs->unit != 0) return LOOM_OK;
    loom_status st = LOOM_OK;
    for (int i = 0; i < rs->lg.n_leaves && st == 0; i++) {
        const loom_local_leaf *leaf = &rs->lg.leaves[i];
        const loom_value_info *gv = &p->global->values[leaf->global];
        if (gv->role != LOOM_ROLE_PARAM) continue;
        float *full = NULL;
        LOOM_ASSERT(loom_model_tensor(p->model, gv->name, &full, NULL) == 0);
        st = loom__gather_full(rs, leaf, rs->runner->ptr[leaf->local], full);
    }
    return st;
}

static loom_status rank_setup(rank_state *rs) {
    loom_parallel_t p = rs->par;
    LOOM_CHECK(loom_comm_split(rs->world, rs->unit, rs->index, &rs->unit_comm));
    LOOM_CHECK(loom_comm_split(rs->world, rs->index, rs->unit, &rs->dp_comm));
    LOOM_CHECK(loom__parallelize(p->global, p->loss, &p->plan, rs->index, &rs->lg));
    if (p->tc.recompute) LOOM_CHECK(loom_graph_recompute(rs->lg.graph, p->tc.recompute));
    loom_lower_options lo = {.train = 1, .micro_batches = p->tc.grad_accum,
                             .dp_sync = p->units > 1};
    loom_program *prog = NULL;
    LOOM_CHECK(loom__lower(rs->lg.graph, &lo, &prog));
    int zero = p->cc.use_zero && p->units > 1;
    if (zero) {
        // ZeRO groups of `size` units: the same share index across groups forms zero_cross.
        int size = p->units / p->cc.zero_ngroups;
        loom_status st = loom_comm_split(rs->dp_comm, rs->unit / size, rs->unit, &rs->zero_comm);
        if (st == 0) st = loom_comm_split(rs->dp_comm, rs->unit % size, rs->unit, &rs->zero_cross);
        if (st < 0) return loom__program_free(prog), st;
        // Pad the flat parameter (and gradient) region so it splits into equal shares.
        size_t quantum = (size_t)size * 16 * sizeof(float);
        size_t padded = (prog->region_bytes[LOOM_REGION_PARAM] + quantum - 1) / quantum * quantum;
        prog->region_bytes[LOOM_REGION_PARAM] = prog->region_bytes[LOOM_REGION_PARAM_GRAD] = padded;
    }
    size_t bytes = prog->region_bytes[LOOM_REGION_PARAM];
    rs->params = loom__malloc_aligned(bytes ? bytes : 64);
    if (!rs->params) return loom__program_free(prog), LOOM_ERR_NOMEM;
    memset(rs->params, 0, bytes);
    LOOM_CHECK(loom__runner_create(prog, loom__backend_cpu(), rs->params, &rs->runner));
    loom_runner *r = rs->runner;
    r->kernel.comm = p->parts > 1 ? rs->unit_comm : NULL;
    r->dp_comm = rs->dp_comm;
    r->trace = p->tc.trace;
    r->zero_comm = rs->zero_comm;
    r->zero_cross = rs->zero_cross;
    r->zero_reduce_scatter = p->cc.zero_reduce_scatter;
    // Overlap the gradient all-reduce with the backward (not with ZeRO's reduce-scatter).
    if (p->cc.async_reducer && !(zero && p->cc.zero_reduce_scatter))
        LOOM_CHECK(loom__runner_enable_buckets(r, p->cc.bucket_bytes ? p->cc.bucket_bytes : 1));
    // Replicated parameters count in the gradient norm on the unit's first rank only.
    r->norm_skip = loom__calloc((size_t)(prog->n_params ? prog->n_params : 1), 1);
    if (!r->norm_skip) return LOOM_ERR_NOMEM;
    for (int i = 0; i < prog->n_params; i++) {
        for (int k = 0; k < rs->lg.n_leaves; k++)
            if (rs->lg.leaves[k].local == prog->params[i])
                r->norm_skip[i] = rs->lg.leaves[k].place.kind != LOOM_PLACE_SHARD && rs->index > 0;
    }
    const loom_train_config *tc = &p->tc;
    loom_optim_params optim = {
        .kind = (int)tc->optimizer, .lr = tc->lr, .beta1 = tc->beta1, .beta2 = tc->beta2,
        .eps = tc->eps, .weight_decay = tc->weight_decay, .momentum = tc->momentum,
        .grad_clip = tc->grad_clip, .loss_scale = tc->loss_scale};
    LOOM_CHECK(loom__runner_set_optimizer(r, &optim));
    load_params(rs);
    // Input buffers: the rank's rows of every micro-batch. The batch inputs are replicated in
    // the unit or split by rows; a plan splitting them otherwise is refused.
    static const char *names[LOOM_PARALLEL_INPUTS] = {"tokens", "targets", "positions",
                                                      "loss_norm"};
    int64_t unit_rows = tc->batch / p->units;
    for (int k = 0; k < LOOM_PARALLEL_INPUTS; k++) {
        loom_value gv = loom_graph_find(p->global, names[k]);
        const loom_local_leaf *leaf = gv >= 0 ? find_leaf(rs, gv) : NULL;
        rs->inputs[k] = leaf ? leaf->local : LOOM_NONE;
        if (!leaf) continue;
        const loom_placement *pl = &leaf->place;
        if (k < 3 && pl->kind == LOOM_PLACE_SHARD && (pl->dim != 0 || pl->chunks != 1))
            return loom__error(LOOM_ERR_UNSUPPORTED, "the plan splits input '%s' along dim %d; "
                               "inputs may be split only by rows (dim 0)", names[k], pl->dim);
        rs->rows[k] = rs->lg.graph->values[leaf->local].shape[0];
        rs->first_row[k] = rs->unit * unit_rows + (pl->kind == LOOM_PLACE_SHARD ? rs->index * rs->rows[k] : 0);
        int64_t n = loom__value_numel(rs->lg.graph, leaf->local) * tc->grad_accum;
        rs->batch[k] = loom__malloc((size_t)n * 4);  // int32 or float
        if (!rs->batch[k]) return LOOM_ERR_NOMEM;
    }
    return LOOM_OK;
}

loom_status loom_parallelize(loom_model_t model, const loom_compute_config *cc,
                             const loom_train_config *tc, loom_parallel_t *out) {
    *out = NULL;
    LOOM_CHECK(loom__train_config_validate(tc));
    if (cc->plan_ndevices < 1 || cc->runtime_ndevices < 1 ||
        cc->runtime_ndevices % cc->plan_ndevices != 0)
        return loom__error(LOOM_ERR_INVALID, "runtime_ndevices (%d) must be a multiple of "
                           "plan_ndevices (%d)", cc->runtime_ndevices, cc->plan_ndevices);
    if ((unsigned)cc->policy >= LOOM_POLICY_COUNT)
        return loom__error(LOOM_ERR_INVALID, "unknown policy %d", (int)cc->policy);
    if (cc->comm != LOOM_COMM_LOCAL && cc->comm != LOOM_COMM_MPI)
        return loom__error(LOOM_ERR_UNSUPPORTED, "comm %s is not supported by loom_parallelize",
                           loom_comm_kind_name(cc->comm));
    int units = cc->runtime_ndevices / cc->plan_ndevices;
    if (cc->use_zero && (cc->zero_ngroups < 1 || units % cc->zero_ngroups != 0))
        return loom__error(LOOM_ERR_INVALID, "zero_ngroups (%d) must divide the %d data-parallel "
                           "units", cc->zero_ngroups, units);
    if (tc->batch % units != 0)
        return loom__error(LOOM_ERR_INVALID, "the global batch (%d) must divide by the %d "
                           "data-parallel units", tc->batch, units);
    loom_parallel_t p = loom__calloc(1, sizeof *p);
    if (!p) return LOOM_ERR_NOMEM;
    p->model = model;
    p->cc = *cc;
    p->tc = *tc;
    p->parts = cc->plan_ndevices;
    p->units = units;
    p->nranks = cc->runtime_ndevices;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    // Ranks sharing this machine's cores: all of them as threads, or the MPI processes that
    // the launcher placed on this node.
    int per_process = p->nranks;
    if (cc->comm == LOOM_COMM_MPI) {
        const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
        if (!local) local = getenv("SLURM_NTASKS_PER_NODE");
        per_process = local && atoi(local) > 0 ? atoi(local) : 1;
    }
    p->threads_per_rank = tc->threads > 0 ? tc->threads : (int)(cores / per_process);
    p->loss_norm = loom__calloc((size_t)tc->grad_accum, sizeof(float));
    if (!p->loss_norm) return loom_parallel_free(p), LOOM_ERR_NOMEM;
    if (p->threads_per_rank < 1) p->threads_per_rank = 1;
    loom_comm_t *world = NULL;
    // The forward graph with the training loss (no backward: the local graphs get theirs).
    loom_status st = loom_graph_create(&p->global);
    if (st < 0) goto fail;
    st = loom__family(loom_model_get_config(model)->family)
             ->build(loom_model_get_config(model), p->global, LOOM_GRAPH_FORWARD, tc->batch / units,
                     tc->seq, 0);
    if (st < 0) goto fail;
    {
        int64_t bt[2] = {tc->batch / units, tc->seq};
        loom_value logits = LOOM_NONE;
        for (int v = 0; v < p->global->n_values; v++)
            if (p->global->values[v].is_output) logits = v;
        loom_value targets = loom_graph_input(p->global, "targets", LOOM_DTYPE_I32, 2, bt);
        loom_value norm = loom_graph_input(p->global, "loss_norm", LOOM_DTYPE_F32, 1,
                                           (int64_t[]){1});
        p->loss = loom_mul(p->global, loom_cross_entropy_sum(p->global, logits, targets, -100), norm);
        st = loom_graph_status(p->global);
        if (st < 0) goto fail;
    }
    st = loom__plan_create(p->global, cc, p->parts, loom_model_get_config(model), &p->plan);
    if (st < 0) goto fail;
    p->n_held = cc->comm == LOOM_COMM_MPI ? 1 : p->nranks;
    p->ranks = loom__calloc((size_t)p->n_held, sizeof(rank_state));
    world = loom__calloc((size_t)p->n_held, sizeof(loom_comm_t));
    if (!p->ranks || !world) {
        st = LOOM_ERR_NOMEM;
        goto fail;
    }
    loom_comm_config ccfg = loom_comm_config_default();
    ccfg.timeout_s = cc->timeout_s;
    if (cc->comm == LOOM_COMM_MPI) {
        st = loom_comm_mpi_create(NULL, &ccfg, &world[0]);
        if (st < 0) goto fail;
        if (loom_comm_size(world[0]) != p->nranks) {
            st = loom__error(LOOM_ERR_INVALID, "mpirun started %d processes but runtime_ndevices "
                             "is %d; start one process per device", loom_comm_size(world[0]),
                             p->nranks);
            loom_comm_destroy(world[0]);
            goto fail;
        }
    } else {
        st = loom_comm_local_create_all(p->nranks, &ccfg, world);
        if (st < 0) goto fail;
    }
    for (int k = 0; k < p->n_held; k++) {
        int r = cc->comm == LOOM_COMM_MPI ? loom_comm_rank(world[0]) : k;
        p->ranks[k] = (rank_state){.par = p, .rank = r, .unit = r / p->parts,
                                   .index = r % p->parts, .world = world[k],
                                   .inputs = {LOOM_NONE, LOOM_NONE, LOOM_NONE}};
    }
    loom__free(world);
    world = NULL;
    st = loom__run_ranks(p, rank_setup);
    if (st < 0) goto fail;
    *out = p;
    return LOOM_OK;
fail:
    loom__free(world);
    loom_parallel_free(p);
    return st;
}

void loom_parallel_free(loom_parallel_t p) {
    if (!p) return;
    for (int r = 0; p->ranks && r < p->n_held; r++) {
        rank_state *rs = &p->ranks[r];
        loom__runner_free(rs->eval_runner);
        loom__runner_free(rs->runner);
        loom__free_aligned(rs->params);
        loom__local_graph_free(&rs->lg);
        for (int k = 0; k < LOOM_PARALLEL_INPUTS; k++) loom__free(rs->batch[k]);
        loom_comm_destroy(rs->zero_comm);
        loom_comm_destroy(rs->zero_cross);
        loom_comm_destroy(rs->unit_comm);
        loom_comm_destroy(rs->dp_comm);
        loom_comm_destroy(rs->world);
    }
    loom__free(p->ranks);
    loom__plan_free(&p->plan);
    loom_graph_destroy(p->global);
    loom__free(p->loss_norm);
    loom__free(p);
}

// ---- stepping -------------------------------------------------------------------------------------

// The rank's rows of `micro` micro-batches for runner `r`: its unit's block of the global batch,
// then, for inputs split by rows, its share of it.
static void fill_batch(rank_state *rs, loom_runner *r, int micro) {
    loom_parallel_t p = rs->par;
    size_t T = (size_t)p->tc.seq;
    const int32_t *source[2] = {p->step_tokens, p->step_targets};
    for (int k = 0; k < LOOM_PARALLEL_INPUTS; k++) {
        if (rs->inputs[k] < 0) continue;
        for (int m = 0; m < micro; m++) {
            size_t n = (size_t)rs->rows[k] * T;
            size_t src = ((size_t)m * (size_t)p->tc.batch + (size_t)rs->first_row[k]) * T;
            int32_t *dst = (int32_t *)rs->batch[k] + (size_t)m * n;
            if (k < 2) memcpy(dst, source[k] + src, n * sizeof(int32_t));
            else if (k == 2) for (size_t i = 0; i < n; i++) dst[i] = (int32_t)(i % T);
            else ((float *)rs->batch[k])[m] = p->loss_norm[m];
        }
        r->batch_src[rs->inputs[k]] = rs->batch[k];
    }
}

// Each unit's loss is complete on its ranks: average rs->loss over the units (data parallel).
static loom_status average_over_units(rank_state *rs) {
    if (rs->par->units == 1) return LOOM_OK;
    LOOM_CHECK(loom_comm_all_reduce(rs->dp_comm, &rs->loss, &rs->loss, 1, LOOM_DTYPE_F32,
                                    LOOM_REDUCE_SUM));
    rs->loss /= (float)rs->par->units;
    return LOOM_OK;
}

static loom_status rank_step(rank_state *rs) {
    fill_batch(rs, rs->runner, rs->par->tc.grad_accum);
    LOOM_CHECK(loom__runner_run(rs->runner));
    rs->loss = (float)(rs->runner->loss_sum / rs->par->tc.grad_accum);
    return average_over_units(rs);
}

// Forward only: the loss of the first micro-batch, averaged over the units.
static loom_status rank_eval(rank_state *rs) {
    if (!rs->eval_runner) {
        loom_lower_options lo = {.train = 0, .micro_batches = 1};
        loom_program *prog = NULL;
        LOOM_CHECK(loom__lower(rs->lg.graph, &lo, &prog));
        // The forward program's parameters are the training program's (same local graph).
        LOOM_ASSERT(prog->region_bytes[LOOM_REGION_PARAM] <=
                    rs->runner->prog->region_bytes[LOOM_REGION_PARAM]);
        LOOM_CHECK(loom__runner_create(prog, loom__backend_cpu(), rs->params, &rs->eval_runner));
        rs->eval_runner->kernel.comm = rs->runner->kernel.comm;
    }
    fill_batch(rs, rs->eval_runner, 1);
    LOOM_CHECK(loom__runner_run(rs->eval_runner));
    rs->loss = *(const float *)rs->eval_runner->ptr[rs->lg.loss];
    return average_over_units(rs);
}

// Check and take the global batch of `micro` micro-batches the next rank function reads. Bad
// ids are refused here, before any rank starts (a rank failing mid-step poisons the
// communicators). The loss normalizer makes every micro-batch's loss the mean over all its kept
// targets, however unevenly ignored targets fall on the ranks.
static loom_status set_batch(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                             int micro, const char *fn) {
    if (!tokens || !targets)
        return loom__error(LOOM_ERR_INVALID, "%s: tokens and targets are required", fn);
    int64_t V = loom_model_get_config(p->model)->vocab_size;
    int64_t per_micro = (int64_t)p->tc.batch * p->tc.seq;
    for (int m = 0; m < micro; m++) {
        int64_t kept = 0;
        for (int64_t i = m * per_micro; i < (m + 1) * per_micro; i++) {
            if (tokens[i] < 0 || tokens[i] >= V)
                return loom__error(LOOM_ERR_INVALID, "%s: token id %d at position %lld is outside "
                                   "[0, %lld); the data does not fit this model's vocabulary", fn,
                                   tokens[i], (long long)i, (long long)V);
            if (targets[i] == -100) continue;
            if (targets[i] < 0 || targets[i] >= V)
                return loom__error(LOOM_ERR_INVALID, "%s: target id %d at position %lld is outside "
                                   "[0, %lld) and is not the ignore index -100", fn, targets[i],
                                   (long long)i, (long long)V);
            kept++;
        }
        p->loss_norm[m] = kept ? (float)p->units / (float)kept : 0.0f;
    }
    p->step_tokens = tokens;
    p->step_targets = targets;
    return LOOM_OK;
}

loom_status loom_parallel_eval(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                               float *loss) {
    LOOM_CHECK(set_batch(p, tokens, targets, 1, "loom_parallel_eval"));
    LOOM_CHECK(loom__run_ranks(p, rank_eval));
    *loss = p->ranks[0].loss;
    return LOOM_OK;
}

loom_status loom_parallel_step(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                               loom_step_stats *stats) {
    LOOM_CHECK(set_batch(p, tokens, targets, p->tc.grad_accum, "loom_parallel_step"));
    double t0 = omp_get_wtime();
    LOOM_CHECK(loom__run_ranks(p, rank_step));
    double dt = omp_get_wtime() - t0;
    if (stats) {
        stats->loss = p->ranks[0].loss;
        stats->grad_norm = p->ranks[0].runner->last_grad_norm;
        stats->comm_wait_s = p->ranks[0].runner->dp_wait_seconds;
        stats->seconds = dt;
        stats->tokens_per_s = (double)p->tc.grad_accum * p->tc.batch * p->tc.seq / (dt > 0 ? dt : 1e-9);
    }
    return LOOM_OK;
}

loom_status loom_parallel_sync_model(loom_parallel_t p) { return loom__run_ranks(p, rank_merge); }

loom_memory_stats loom_parallel_memory(loom_parallel_t p, int rank) {
    loom_memory_stats m = {0};
    const rank_state *rs = NULL;
    for (int k = 0; k < p->n_held; k++)
        if (p->ranks[k].rank == rank) rs = &p->ranks[k];
    if (!rs) return m;
    const loom_program *prog = rs->runner->prog;
    size_t params = prog->region_bytes[LOOM_REGION_PARAM];
    m.parameters = params;
    m.gradients = prog->region_bytes[LOOM_REGION_PARAM_GRAD];
    m.optimizer = loom__runner_optimizer_floats(rs->runner) * sizeof(float);
    m.activations = prog->region_bytes[LOOM_REGION_ARENA] + prog->region_bytes[LOOM_REGION_PERSIST];
    m.inputs = prog->region_bytes[LOOM_REGION_INPUT];
    return m;
}

// ---- device allocation ----------------------------------------------------------------------------

// A parameter's module group for the table: "h.3.attn" of "h.3.attn.c_attn.weight" (the path
// without its last component and, below a numbered layer, at most one more level).
static void module_group(const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", name);
    char *last = strrchr(buf, '.');
    if (last) *last = '\0';
    int depth = 0;
    for (char *c = buf; *c; c++)
        if (*c == '.' && ++depth == 3) {
            *c = '\0';
            break;
        }
}

void loom_parallel_print_allocation(loom_parallel_t p, FILE *f) {
    const rank_state *rs = &p->ranks[0];  // every unit's ranks hold the same shares
    fprintf(f, "device allocation: %d ranks = %d unit%s x %d devices, policy %s, comm %s%s\n",
            p->nranks, p->units, p->units > 1 ? "s (data parallel)" : "", p->parts,
            loom_policy_name(p->cc.policy), loom_comm_kind_name(p->cc.comm),
            p->cc.use_zero && p->units > 1 ? ", ZeRO-1" : "");
    int shown = p->nranks < 8 ? p->nranks : 8;
    fprintf(f, "  %-28s", "module");
    for (int r = 0; r < shown; r++) fprintf(f, " %7s%d", "rank", r);
    if (shown < p->nranks) fprintf(f, "  ...");
    fputc('\n', f);
    char group[256] = "", prev[256] = "";
    double held = 0, total = 0;
    for (int i = 0; i <= rs->lg.n_leaves; i++) {
        const loom_local_leaf *leaf = i < rs->lg.n_leaves ? &rs->lg.leaves[i] : NULL;
        const loom_value_info *gv = leaf ? &p->global->values[leaf->global] : NULL;
        if (leaf && gv->role != LOOM_ROLE_PARAM) continue;
        if (leaf) module_group(gv->name, group, sizeof group);
        if (prev[0] && (!leaf || strcmp(group, prev) != 0)) {
            char cell[16];
            if (held >= total) snprintf(cell, sizeof cell, "all");
            else snprintf(cell, sizeof cell, "%.0f%%", 100.0 * held / total);
            fprintf(f, "  %-28s", prev);
            for (int r = 0; r < shown; r++) fprintf(f, " %8s", cell);
            fputc('\n', f);
            held = total = 0;
        }
        if (!leaf) break;
        snprintf(prev, sizeof prev, "%s", group);
        total += (double)loom__value_numel(p->global, leaf->global);
        held += (double)loom__value_numel(rs->lg.graph, leaf->local);
    }
    loom_memory_stats m = loom_parallel_memory(p, rs->rank);
    fprintf(f, "  per rank: parameters %.2f MB, gradients %.2f MB, optimizer state %.2f MB, "
            "activations %.2f MB (planned)\n", m.parameters / 1e6, m.gradients / 1e6,
            m.optimizer / 1e6, m.activations / 1e6);
}

loom_status loom_parallel_write_trace(loom_parallel_t p, const char *path) {
    loom_runner **runners = loom__calloc((size_t)p->n_held, sizeof(loom_runner *));
    int *ranks = loom__calloc((size_t)p->n_held, sizeof(int));
    loom_status st = LOOM_ERR_NOMEM;
    if (runners && ranks) {
        for (int k = 0; k < p->n_held; k++) runners[k] = p->ranks[k].runner, ranks[k] = p->ranks[k].rank;
        char own[4096];
        if (p->cc.comm == LOOM_COMM_MPI) snprintf(own, sizeof own, "%s-rank%d", path, ranks[0]);
        else snprintf(own, sizeof own, "%s", path);
        st = loom__trace_write(own, runners, ranks, p->n_held);
    }
    loom__free(runners), loom__free(ranks);
    return st;
}
