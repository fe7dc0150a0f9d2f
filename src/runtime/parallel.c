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
                                             "hybrid", "autodist"};

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
struct loom_autodist *loom_parallel_autodist(loom_parallel_t p) { return p->autodist; }
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
                                                     leaf->place.chunks, p->tp);
            loom__shard_copy(&l, rs->tp_index, local, full, 1, 0);
        } else {
            memcpy(local, full, loom__value_bytes(lg, leaf->local));
        }
    }
}

static int first_rank(uint64_t set);

int loom__leaf_owner(const rank_state *rs, const loom_local_leaf *leaf) {
    if (first_rank(leaf->pipe_ranks) != rs->pipe_rank) return 0;
    return leaf->place.kind == LOOM_PLACE_SHARD || rs->tp_index == 0;
}

// The full tensor of a parameter-shaped value from the stage's shards of it (`local` on each
// rank): collective over the stage; its first rank receives it in `full`.
loom_status loom__gather_full(rank_state *rs, const loom_local_leaf *leaf, const float *local,
                              float *full) {
    const loom_value_info *gv = &rs->par->global->values[leaf->global];
    int64_t n = loom__value_numel(rs->lg.graph, leaf->local), parts = rs->par->tp;
    if (leaf->place.kind != LOOM_PLACE_SHARD) {
        if (rs->tp_index == 0) memcpy(full, local, (size_t)n * sizeof(float));
        return LOOM_OK;
    }
    float *staged = loom__malloc((size_t)(n * parts) * sizeof(float));
    if (!staged) return LOOM_ERR_NOMEM;
    loom_status st = loom_comm_all_gather(rs->tp_comm, local, staged, (size_t)n, LOOM_DTYPE_F32);
    if (st == 0 && rs->tp_index == 0) {
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
    shape[pl->dim] /= rs->par->tp;
    offset[pl->dim] = rs->tp_index * shape[pl->dim];
    return 1;
}

// The first pipeline rank in a set of them.
static int first_rank(uint64_t set) {
    int r = 0;
    while (r < 63 && !(set >> r & 1)) r++;
    return r;
}

// Merge unit 0's shards into the model's full tensors on the process of rank 0: each stage
// gathers its parameters on its first rank, which sends rank 0 those it does not hold.
static loom_status rank_merge(rank_state *rs) {
    loom_parallel_t p = rs->par;
    if (rs->unit != 0) return LOOM_OK;
    loom_status st = LOOM_OK;
    float *staged = NULL;
    size_t staged_n = 0;
    for (int v = 0; v < p->global->n_values && st == 0; v++) {
        const loom_value_info *gv = &p->global->values[v];
        if (gv->role != LOOM_ROLE_PARAM || !p->param_holders[v]) continue;
        int owner = first_rank(p->param_holders[v]);
        float *full = NULL;
        LOOM_ASSERT(loom_model_tensor(p->model, gv->name, &full, NULL) == 0);
        size_t n = (size_t)loom__value_numel(p->global, v);
        if (rs->pipe_rank == owner) {
            const loom_local_leaf *leaf = find_leaf(rs, v);
            LOOM_ASSERT(leaf);
            float *dst = full;
            if (owner != 0 && rs->tp_index == 0) {
                if (staged_n < n) {
                    loom__free(staged);
                    staged = loom__malloc(n * sizeof(float));
                    staged_n = staged ? n : 0;
                    if (!staged) return LOOM_ERR_NOMEM;
                }
                dst = staged;
            }
            st = loom__gather_full(rs, leaf, rs->runner->ptr[leaf->local], dst);
            if (st == 0 && owner != 0 && rs->tp_index == 0)
                st = loom_comm_send(rs->world, dst, n, LOOM_DTYPE_F32, 0, v);
        } else if (owner != 0 && rs->rank == 0) {
            st = loom_comm_recv(rs->world, full, n, LOOM_DTYPE_F32, owner * p->tp, v);
        }
    }
    loom__free(staged);
    return st;
}

// Communicators of the rank: its unit, stage (tensor parallel), pipeline, data-parallel group,
// and one per set of pipeline ranks sharing parameters (tied embeddings).
static loom_status split_comms(rank_state *rs) {
    loom_parallel_t p = rs->par;
    LOOM_CHECK(loom_comm_split(rs->world, rs->unit, rs->index, &rs->unit_comm));
    LOOM_CHECK(loom_comm_split(rs->world, rs->unit * p->pp + rs->pipe_rank, rs->tp_index,
                               &rs->tp_comm));
    LOOM_CHECK(loom_comm_split(rs->world, rs->unit * p->tp + rs->tp_index, rs->pipe_rank,
                               &rs->pipe_comm));
    LOOM_CHECK(loom_comm_split(rs->world, rs->index, rs->unit, &rs->dp_comm));
    rs->tied_comms = loom__calloc((size_t)(p->n_tied_sets ? p->n_tied_sets : 1), sizeof(loom_comm_t));
    if (!rs->tied_comms) return LOOM_ERR_NOMEM;
    rs->n_tied_groups = p->n_tied_sets;
    for (int k = 0; k < p->n_tied_sets; k++) {
        int member = p->tied_sets[k] >> rs->pipe_rank & 1;
        LOOM_CHECK(loom_comm_split(rs->world, member ? rs->unit * p->tp + rs->tp_index : -1,
                                   rs->pipe_rank, &rs->tied_comms[k]));
    }
    return LOOM_OK;
}

// The rank's pipeline program description: its schedule, boundary traffic and tied parameters.
static loom_status pipe_program(rank_state *rs, loom_schedule kind, int micros,
                                loom_pipe_program *pp, loom_pipe_action **actions,
                                loom_value **tied, int **groups) {
    loom_parallel_t p = rs->par;
    *tied = NULL, *groups = NULL;
    LOOM_CHECK(loom__schedule_actions(kind, p->pp, p->plan.chunks, micros, rs->pipe_rank,
                                      actions, &pp->n_actions));
    pp->actions = *actions;
    pp->rank = rs->pipe_rank;
    pp->ranks = p->pp;
    pp->n_sends = rs->lg.n_sends, pp->sends = rs->lg.sends;
    pp->n_recvs = rs->lg.n_recvs, pp->recvs = rs->lg.recvs;
    *tied = loom__malloc((size_t)(rs->lg.n_leaves + 1) * sizeof(loom_value));
    *groups = loom__malloc((size_t)(rs->lg.n_leaves + 1) * sizeof(int));
    if (!*tied || !*groups) return LOOM_ERR_NOMEM;
    pp->n_tied = 0;
    for (int i = 0; i < rs->lg.n_leaves; i++) {
        const loom_local_leaf *leaf = &rs->lg.leaves[i];
        if (p->global->values[leaf->global].role != LOOM_ROLE_PARAM) continue;
        for (int k = 0; k < p->n_tied_sets; k++) {
            if (p->tied_sets[k] != leaf->pipe_ranks) continue;
            (*tied)[pp->n_tied] = leaf->local;
            (*groups)[pp->n_tied++] = k;
        }
    }
    pp->tied = *tied, pp->tied_group = *groups;
    return LOOM_OK;
}

// Lower the rank's local graph: training (train = 1) or forward only over `micros`
// micro-batches, under the pipeline schedule when there is one.
static loom_status lower_rank(rank_state *rs, int train, int micros, loom_program **prog) {
    loom_parallel_t p = rs->par;
    loom_lower_options lo = {.train = train, .micro_batches = micros,
                             .dp_sync = train && p->units > 1, .seed = 1.0f};
    if (p->pp * p->plan.chunks == 1) return loom__lower(rs->lg.graph, &lo, prog);
    loom_pipe_program pp = {0};
    loom_pipe_action *actions = NULL;
    loom_value *tied = NULL;
    int *groups = NULL;
    loom_schedule kind = train ? p->cc.pipeline_scheduler : LOOM_SCHEDULE_INFER_PIPE;
    loom_status st = pipe_program(rs, kind, micros, &pp, &actions, &tied, &groups);
    lo.pipe = &pp;
    if (st == 0) st = loom__lower(rs->lg.graph, &lo, prog);
    loom__free(actions), loom__free(tied), loom__free(groups);
    return st;
}

// Bind a program to the rank's parameters and communicators.
static loom_status bind_runner(rank_state *rs, loom_program *prog, loom_runner **out) {
    loom_parallel_t p = rs->par;
    LOOM_CHECK(loom__runner_create(prog, loom__backend_cpu(), rs->params, out));
    loom_runner *r = *out;
    r->kernel.comm = p->tp > 1 ? rs->tp_comm : NULL;
    r->norm_comm = p->parts > 1 ? rs->unit_comm : NULL;
    r->pipe_comm = rs->pipe_comm;
    r->tied_comms = rs->tied_comms;
    r->dp_comm = rs->dp_comm;
    r->trace = p->tc.trace;
    return LOOM_OK;
}

static loom_status rank_setup(rank_state *rs) {
    loom_parallel_t p = rs->par;
    LOOM_CHECK(split_comms(rs));
    LOOM_CHECK(loom__parallelize(p->global, p->loss, &p->plan, rs->tp_index, rs->pipe_rank,
                                 &rs->lg));
    if (p->tc.recompute) LOOM_CHECK(loom__graph_recompute(rs->lg.graph, p->tc.recompute, 0));
    loom_program *prog = NULL;
    LOOM_CHECK(lower_rank(rs, 1, p->micros, &prog));
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
    LOOM_CHECK(bind_runner(rs, prog, &rs->runner));
    loom_runner *r = rs->runner;
    r->zero_comm = rs->zero_comm;
    r->zero_cross = rs->zero_cross;
    r->zero_reduce_scatter = p->cc.zero_reduce_scatter;
    // Overlap the gradient all-reduce with the backward (not with ZeRO's reduce-scatter).
    if (p->cc.async_reducer && !(zero && p->cc.zero_reduce_scatter))
        LOOM_CHECK(loom__runner_enable_buckets(r, p->cc.bucket_bytes ? p->cc.bucket_bytes : 1));
    // A gradient counts in the global norm once: replicated parameters on their stage's first
    // rank, tied ones on the first pipeline rank holding them.
    r->norm_skip = loom__calloc((size_t)(prog->n_params ? prog->n_params : 1), 1);
    if (!r->norm_skip) return LOOM_ERR_NOMEM;
    for (int i = 0; i < prog->n_params; i++) {
        for (int k = 0; k < rs->lg.n_leaves; k++)
            if (rs->lg.leaves[k].local == prog->params[i])
                r->norm_skip[i] = !loom__leaf_owner(rs, &rs->lg.leaves[k]);
    }
    const loom_train_config *tc = &p->tc;
    loom_optim_params optim = {
        .kind = (int)tc->optimizer, .lr = tc->lr, .beta1 = tc->beta1, .beta2 = tc->beta2,
        .eps = tc->eps, .weight_decay = tc->weight_decay, .momentum = tc->momentum,
        .grad_clip = tc->grad_clip, .loss_scale = tc->loss_scale};
    LOOM_CHECK(loom__runner_set_optimizer(r, &optim));
    load_params(rs);
    rs->micro_loss = loom__calloc((size_t)p->micros, sizeof(float));
    if (!rs->micro_loss) return LOOM_ERR_NOMEM;
    // Input buffers: the rank's rows of every micro-batch. The batch inputs are replicated in
    // the stage or split by rows; a plan splitting them otherwise is refused.
    static const char *names[LOOM_PARALLEL_INPUTS] = {"tokens", "targets", "positions",
                                                      "loss_norm"};
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
        rs->first_row[k] = pl->kind == LOOM_PLACE_SHARD ? rs->tp_index * rs->rows[k] : 0;
        int64_t n = loom__value_numel(rs->lg.graph, leaf->local) * p->micros;
        rs->batch[k] = loom__malloc((size_t)n * 4);  // int32 or float
        if (!rs->batch[k]) return LOOM_ERR_NOMEM;
    }
    return LOOM_OK;
}

// Which pipeline ranks read each parameter, and the distinct sets of more than one (each set's
// ranks sum their copies' gradients).
static loom_status find_tied(loom_parallel_t p) {
    const loom_graph *g = p->global;
    p->param_holders = loom__calloc((size_t)g->n_values, sizeof(uint64_t));
    p->tied_sets = loom__calloc((size_t)g->n_values + 1, sizeof(uint64_t));
    if (!p->param_holders || !p->tied_sets) return LOOM_ERR_NOMEM;
    for (int i = 0; i < g->n_nodes; i++) {
        const loom_node *n = &g->nodes[i];
        int stage = p->plan.stage_of ? p->plan.stage_of[i] : 0;
        for (int k = 0; k < n->n_in; k++)
            if (g->values[n->in[k]].role == LOOM_ROLE_PARAM)
                p->param_holders[n->in[k]] |= 1ull << (stage % p->pp);
    }
    for (int v = 0; v < g->n_values; v++) {
        uint64_t set = p->param_holders[v];
        if (!set || !(set & (set - 1))) continue;  // one holder
        int k = 0;
        while (k < p->n_tied_sets && p->tied_sets[k] != set) k++;
        if (k == p->n_tied_sets) p->tied_sets[p->n_tied_sets++] = set;
    }
    return LOOM_OK;
}

// The plan: pipeline stages (balanced by measured op costs when asked: measured once, by rank 0
// under MPI, so every process cuts the same stages), per-op strategies, tied parameters.
static loom_status plan(loom_parallel_t p, loom_comm_t world) {
    const loom_compute_config *cc = &p->cc;
    double *cost = NULL;
    int balance = cc->pipeline_measured && cc->pipeline_nstages * (cc->pipeline_nchunks > 1
                                                                       ? cc->pipeline_nchunks : 1) > 1;
    if (balance) {
        cost = loom__calloc((size_t)p->global->n_nodes + 1, sizeof(double));
        if (!cost) return LOOM_ERR_NOMEM;
        loom_status st = LOOM_OK;
        if (loom_comm_rank(world) == 0) st = loom__measure_costs(p->global, p->threads_per_rank, cost);
        if (st == 0 && cc->comm == LOOM_COMM_MPI) {
            // Costs travel as float: the split only compares them.
            float *f = loom__malloc((size_t)p->global->n_nodes * sizeof(float) + 4);
            if (!f) st = LOOM_ERR_NOMEM;
            for (int i = 0; st == 0 && i < p->global->n_nodes; i++) f[i] = (float)cost[i];
            if (st == 0) st = loom_comm_broadcast(world, f, f, (size_t)p->global->n_nodes,
                                                  LOOM_DTYPE_F32, 0);
            for (int i = 0; st == 0 && i < p->global->n_nodes; i++) cost[i] = f[i];
            loom__free(f);
        }
        if (st < 0) return loom__free(cost), st;
    }
    loom_status st = loom__plan_create(p->global, cc, p->tp, loom_model_get_config(p->model),
                                       cost, &p->plan);
    loom__free(cost);
    return st < 0 ? st : find_tied(p);
}

// Check the pipeline settings against the devices and the batch.
static loom_status check_pipeline(const loom_compute_config *cc, const loom_train_config *tc,
                                  int units) {
    int stages = cc->pipeline_nstages;
    if (stages < 1 || cc->plan_ndevices % stages != 0)
        return loom__error(LOOM_ERR_INVALID, "pipeline_nstages (%d) must divide plan_ndevices "
                           "(%d): each pipeline rank gets plan_ndevices / pipeline_nstages "
                           "devices", stages, cc->plan_ndevices);
    if (cc->policy == LOOM_POLICY_PP && cc->plan_ndevices != stages)
        return loom__error(LOOM_ERR_INVALID, "the pp policy puts each stage on one device: "
                           "plan_ndevices (%d) must equal pipeline_nstages (%d); use the hybrid "
                           "policy for tensor-parallel stages", cc->plan_ndevices, stages);
    if (cc->pipeline_nmicros < 1)
        return loom__error(LOOM_ERR_INVALID, "pipeline_nmicros must be >= 1 (got %d)",
                           cc->pipeline_nmicros);
    if ((unsigned)cc->pipeline_scheduler >= LOOM_SCHEDULE_COUNT ||
        cc->pipeline_scheduler == LOOM_SCHEDULE_INFER_PIPE)
        return loom__error(LOOM_ERR_INVALID, "pipeline_scheduler must be gpipe, 1f1b or "
                           "1f1b_interleaved for training (infer_pipe runs inference)");
    if (tc->batch % (units * cc->pipeline_nmicros) != 0)
        return loom__error(LOOM_ERR_INVALID, "the global batch (%d) must divide into %d "
                           "data-parallel units x %d micro-batches", tc->batch, units,
                           cc->pipeline_nmicros);
    return LOOM_OK;
}

int loom__threads_per_rank(const loom_compute_config *cc, const loom_train_config *tc) {
    if (tc->threads > 0) return tc->threads;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int sharing = cc->runtime_ndevices;
    if (cc->comm == LOOM_COMM_MPI) {
        const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
        if (!local) local = getenv("SLURM_NTASKS_PER_NODE");
        sharing = local && atoi(local) > 0 ? atoi(local) : 1;
    }
    int threads = (int)(cores / (sharing > 0 ? sharing : 1));
    return threads < 1 ? 1 : threads;
}

loom_status loom_parallelize(loom_model_t model, const loom_compute_config *cc,
                             const loom_train_config *tc, loom_parallel_t *out) {
    *out = NULL;
    if (cc->policy == LOOM_POLICY_AUTODIST) return loom__parallelize_autodist(model, cc, tc, out);
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
    LOOM_CHECK(check_pipeline(cc, tc, units));
    loom_parallel_t p = loom__calloc(1, sizeof *p);
    if (!p) return LOOM_ERR_NOMEM;
    p->model = model;
    p->cc = *cc;
    p->tc = *tc;
    p->parts = cc->plan_ndevices;
    p->pp = cc->pipeline_nstages;
    p->tp = p->parts / p->pp;
    p->units = units;
    p->nranks = cc->runtime_ndevices;
    p->nmicros = cc->pipeline_nmicros;
    p->micros = tc->grad_accum * p->nmicros;
    p->micro_rows = tc->batch / units / p->nmicros;
    p->threads_per_rank = loom__threads_per_rank(cc, tc);
    size_t M = (size_t)p->micros, micro_ids = (size_t)(units * p->micro_rows * tc->seq);
    p->loss_norm = loom__calloc(M, sizeof(float));
    p->src_tokens = loom__calloc(M, sizeof(int32_t *));
    p->src_targets = loom__calloc(M, sizeof(int32_t *));
    p->src_offset = loom__calloc(M, sizeof(int64_t));
    p->dummy_tokens = loom__calloc(micro_ids, sizeof(int32_t));
    p->dummy_targets = loom__malloc(micro_ids * sizeof(int32_t));
    if (!p->loss_norm || !p->src_tokens || !p->src_targets || !p->src_offset ||
        !p->dummy_tokens || !p->dummy_targets)
        return loom_parallel_free(p), LOOM_ERR_NOMEM;
    for (size_t i = 0; i < micro_ids; i++) p->dummy_targets[i] = -100;
    loom_comm_t *world = NULL;
    // The forward graph of one micro-batch with the training loss (no backward: the local
    // graphs get theirs).
    loom_status st = loom_graph_create(&p->global);
    if (st < 0) goto fail;
    st = loom__model_build_loss_graph(loom_model_get_config(model), p->global, p->micro_rows,
                                      tc->seq, &p->loss);
    if (st < 0) goto fail;
    if (tc->recompute && *tc->recompute && !loom__recompute_matches(p->global, tc->recompute)) {
        st = loom__error(LOOM_ERR_INVALID, "recompute '%s' names no module of this model (module "
                         "names match path suffixes, e.g. 'attn' or 'h.3'; 'layers' means every "
                         "numbered layer)", tc->recompute);
        goto fail;
    }
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
    st = plan(p, world[0]);
    if (st < 0) {
        for (int k = 0; k < p->n_held; k++) loom_comm_destroy(world[k]);
        goto fail;
    }
    for (int k = 0; k < p->n_held; k++) {
        int r = cc->comm == LOOM_COMM_MPI ? loom_comm_rank(world[0]) : k;
        int index = r % p->parts;
        p->ranks[k] = (rank_state){.par = p, .rank = r, .unit = r / p->parts, .index = index,
                                   .pipe_rank = index / p->tp, .tp_index = index % p->tp,
                                   .world = world[k],
                                   .inputs = {LOOM_NONE, LOOM_NONE, LOOM_NONE, LOOM_NONE}};
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
    loom_autodist_free(p->autodist);
    for (int r = 0; p->ranks && r < p->n_held; r++) {
        rank_state *rs = &p->ranks[r];
        loom__runner_free(rs->eval_runner);
        loom__runner_free(rs->runner);
        loom__free_aligned(rs->params);
        loom__local_graph_free(&rs->lg);
        for (int k = 0; k < LOOM_PARALLEL_INPUTS; k++) loom__free(rs->batch[k]);
        loom__free(rs->micro_loss);
        for (int k = 0; k < rs->n_tied_groups; k++) loom_comm_destroy(rs->tied_comms[k]);
        loom__free(rs->tied_comms);
        loom_comm_destroy(rs->zero_comm);
        loom_comm_destroy(rs->zero_cross);
        loom_comm_destroy(rs->unit_comm);
        loom_comm_destroy(rs->tp_comm);
        loom_comm_destroy(rs->pipe_comm);
        loom_comm_destroy(rs->dp_comm);
        loom_comm_destroy(rs->world);
    }
    loom__free(p->ranks);
    loom__plan_free(&p->plan);
    loom_graph_destroy(p->global);
    loom__free(p->loss_norm);
    loom__free(p->src_tokens), loom__free(p->src_targets), loom__free(p->src_offset);
    loom__free(p->dummy_tokens), loom__free(p->dummy_targets);
    loom__free(p->param_holders), loom__free(p->tied_sets);
    loom__free(p);
}

// ---- stepping -------------------------------------------------------------------------------------

// The rank's rows of every micro-batch for runner `r` (its unit's rows of the micro-batch, then,
// for inputs split by rows, its share of them).
static void fill_batch(rank_state *rs, loom_runner *r, int micros) {
    loom_parallel_t p = rs->par;
    size_t T = (size_t)p->tc.seq;
    for (int k = 0; k < LOOM_PARALLEL_INPUTS; k++) {
        if (rs->inputs[k] < 0) continue;
        for (int m = 0; m < micros; m++) {
            size_t n = (size_t)rs->rows[k] * T;
            size_t row = (size_t)(rs->unit * p->src_unit_stride + p->src_offset[m] + rs->first_row[k]);
            int32_t *dst = (int32_t *)rs->batch[k] + (size_t)m * n;
            if (k == 0) memcpy(dst, p->src_tokens[m] + row * T, n * sizeof(int32_t));
            else if (k == 1) memcpy(dst, p->src_targets[m] + row * T, n * sizeof(int32_t));
            else if (k == 2) for (size_t i = 0; i < n; i++) dst[i] = (int32_t)(i % T);
            else ((float *)rs->batch[k])[m] = p->loss_norm[m];
        }
        r->batch_src[rs->inputs[k]] = rs->batch[k];
    }
}

// Every micro-batch's loss share, summed over the units (each is complete on the ranks of its
// last stage, which send it to the rest of the unit); the step's loss is their sum / units.
static loom_status gather_losses(rank_state *rs, loom_runner *r, int micros) {
    loom_parallel_t p = rs->par;
    memcpy(rs->micro_loss, r->micro_loss, (size_t)micros * sizeof(float));
    if (p->parts > 1 && p->pp > 1) {
        int root = (p->pp - 1) * p->tp;  // the last pipeline rank's first rank
        LOOM_CHECK(loom_comm_broadcast(rs->unit_comm, rs->micro_loss, rs->micro_loss,
                                       (size_t)micros, LOOM_DTYPE_F32, root));
    }
    if (p->units > 1)
        LOOM_CHECK(loom_comm_all_reduce(rs->dp_comm, rs->micro_loss, rs->micro_loss,
                                        (size_t)micros, LOOM_DTYPE_F32, LOOM_REDUCE_SUM));
    double sum = 0;
    for (int m = 0; m < micros; m++) sum += rs->micro_loss[m];
    rs->loss = (float)(sum / p->units);
    return LOOM_OK;
}

static loom_status rank_step(rank_state *rs) {
    fill_batch(rs, rs->runner, rs->par->micros);
    LOOM_CHECK(loom__runner_run(rs->runner));
    return gather_losses(rs, rs->runner, rs->par->micros);
}

// Forward only over p->eval_micros micro-batches (the program is made on first use).
static loom_status rank_eval(rank_state *rs) {
    loom_parallel_t p = rs->par;
    if (rs->eval_runner && rs->eval_micros != p->eval_micros) {
        loom__runner_free(rs->eval_runner);
        rs->eval_runner = NULL;
    }
    if (!rs->eval_runner) {
        loom_program *prog = NULL;
        LOOM_CHECK(lower_rank(rs, 0, p->eval_micros, &prog));
        // The forward program's parameters are the training program's (same local graph).
        LOOM_ASSERT(prog->region_bytes[LOOM_REGION_PARAM] <=
                    rs->runner->prog->region_bytes[LOOM_REGION_PARAM]);
        LOOM_CHECK(bind_runner(rs, prog, &rs->eval_runner));
        rs->eval_runner->trace = 0;
        rs->eval_micros = p->eval_micros;
    }
    fill_batch(rs, rs->eval_runner, p->eval_micros);
    LOOM_CHECK(loom__runner_run(rs->eval_runner));
    return gather_losses(rs, rs->eval_runner, p->eval_micros);
}

// Check the ids of micro-batch m (`rows` sequences) before any rank starts (a rank failing
// mid-step poisons the communicators); returns its kept targets in *kept.
static loom_status check_ids(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                             int64_t rows, const char *fn, const char *what, int64_t *kept) {
    if (!tokens || !targets)
        return loom__error(LOOM_ERR_INVALID, "%s: tokens and targets are required (%s)", fn, what);
    int64_t V = loom_model_get_config(p->model)->vocab_size;
    *kept = 0;
    for (int64_t i = 0; i < rows * p->tc.seq; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return loom__error(LOOM_ERR_INVALID, "%s: token id %d at position %lld of %s is "
                               "outside [0, %lld); the data does not fit this model's vocabulary",
                               fn, tokens[i], (long long)i, what, (long long)V);
        if (targets[i] == -100) continue;
        if (targets[i] < 0 || targets[i] >= V)
            return loom__error(LOOM_ERR_INVALID, "%s: target id %d at position %lld of %s is "
                               "outside [0, %lld) and is not the ignore index -100", fn,
                               targets[i], (long long)i, what, (long long)V);
        (*kept)++;
    }
    return LOOM_OK;
}

// Take `batches` (B, T) batches, each split into nmicros micro-batches (micro m of batch a is
// rows [m * micro_rows, (m+1) * micro_rows) of every unit's block). Every batch's loss is the
// mean over all its kept targets, however unevenly ignored targets fall on the ranks; the
// step's loss is the mean over the batches.
static loom_status set_batches(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                               int batches, const char *fn) {
    int64_t per_batch = (int64_t)p->tc.batch * p->tc.seq;
    for (int a = 0; a < batches; a++) {
        int64_t kept = 0;
        char what[64];
        snprintf(what, sizeof what, "batch %d", a);
        LOOM_CHECK(check_ids(p, tokens ? tokens + a * per_batch : NULL,
                             targets ? targets + a * per_batch : NULL, p->tc.batch, fn, what,
                             &kept));
        for (int k = 0; k < p->nmicros; k++) {
            int m = a * p->nmicros + k;
            p->src_tokens[m] = tokens + a * per_batch;
            p->src_targets[m] = targets + a * per_batch;
            p->src_offset[m] = k * p->micro_rows;
            p->loss_norm[m] = kept ? (float)p->units / (float)kept / (float)batches : 0.0f;
        }
    }
    p->src_unit_stride = p->tc.batch / p->units;
    return LOOM_OK;
}

// Take `n` micro-batch samples (units * micro_rows sequences each) and dummies up to `slots`:
// the loss is the mean over the real samples of each sample's mean.
static loom_status set_samples(loom_parallel_t p, const loom_sample *samples, int n, int slots,
                               const char *fn) {
    if (n < 0 || n > slots || (n > 0 && !samples))
        return loom__error(LOOM_ERR_INVALID, "%s: %d samples given; this run takes 1 to %d "
                           "micro-batches per call (grad_accum x pipeline_nmicros)", fn, n, slots);
    int64_t rows = p->units * p->micro_rows;
    for (int m = 0; m < slots; m++) {
        int64_t kept = 0;
        if (m < n) {
            char what[64];
            snprintf(what, sizeof what, "sample %d", m);
            LOOM_CHECK(check_ids(p, samples[m].tokens, samples[m].targets, rows, fn, what, &kept));
        }
        p->src_tokens[m] = m < n ? samples[m].tokens : p->dummy_tokens;
        p->src_targets[m] = m < n ? samples[m].targets : p->dummy_targets;
        p->src_offset[m] = 0;
        p->loss_norm[m] = kept ? (float)p->units / (float)kept / (float)n : 0.0f;
    }
    p->src_unit_stride = p->micro_rows;
    return LOOM_OK;
}

static void fill_stats(loom_parallel_t p, double seconds, loom_step_stats *stats) {
    if (!stats) return;
    stats->loss = p->ranks[0].loss;
    stats->grad_norm = p->ranks[0].runner->last_grad_norm;
    stats->comm_wait_s = p->ranks[0].runner->dp_wait_seconds;
    stats->seconds = seconds;
    stats->tokens_per_s = (double)p->tc.grad_accum * p->tc.batch * p->tc.seq /
                          (seconds > 0 ? seconds : 1e-9);
}

// Per-sample losses: micro-batch m's mean over its kept targets.
static void sample_losses(loom_parallel_t p, int n, float *losses) {
    for (int m = 0; losses && m < n; m++)
        losses[m] = p->ranks[0].micro_loss[m] * (float)n / (float)p->units;
}

loom_status loom_parallel_eval(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                               float *loss) {
    LOOM_CHECK(set_batches(p, tokens, targets, 1, "loom_parallel_eval"));
    p->eval_micros = p->nmicros;
    LOOM_CHECK(loom__run_ranks(p, rank_eval));
    *loss = p->ranks[0].loss;
    return LOOM_OK;
}

loom_status loom_parallel_step(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                               loom_step_stats *stats) {
    LOOM_CHECK(set_batches(p, tokens, targets, p->tc.grad_accum, "loom_parallel_step"));
    double t0 = omp_get_wtime();
    LOOM_CHECK(loom__run_ranks(p, rank_step));
    fill_stats(p, omp_get_wtime() - t0, stats);
    return LOOM_OK;
}

int loom_parallel_micro_batches(loom_parallel_t p) { return p->micros; }
int64_t loom_parallel_micro_rows(loom_parallel_t p) { return (int64_t)p->units * p->micro_rows; }

loom_status loom_parallel_train_step(loom_parallel_t p, const loom_sample *samples, int n,
                                     float *losses, loom_step_stats *stats) {
    LOOM_CHECK(set_samples(p, samples, n, p->micros, "loom_parallel_train_step"));
    if (n == 0) return loom__error(LOOM_ERR_INVALID, "loom_parallel_train_step: no samples");
    double t0 = omp_get_wtime();
    LOOM_CHECK(loom__run_ranks(p, rank_step));
    fill_stats(p, omp_get_wtime() - t0, stats);
    sample_losses(p, n, losses);
    return LOOM_OK;
}

loom_status loom_parallel_infer_step(loom_parallel_t p, const loom_sample *samples, int n,
                                     float *losses) {
    if (n < 1 || n > p->micros)
        return loom__error(LOOM_ERR_INVALID, "loom_parallel_infer_step: %d samples given; this "
                           "run takes 1 to %d per call (grad_accum x pipeline_nmicros)", n,
                           p->micros);
    LOOM_CHECK(set_samples(p, samples, n, n, "loom_parallel_infer_step"));
    p->eval_micros = n;
    LOOM_CHECK(loom__run_ranks(p, rank_eval));
    sample_losses(p, n, losses);
    return LOOM_OK;
}

loom_status loom_parallel_sync_model(loom_parallel_t p) { return loom__run_ranks(p, rank_merge); }

loom_memory_stats loom_parallel_memory(loom_parallel_t p, int rank) {
    loom_memory_stats m = {0};
    const rank_state *rs = NULL;
    for (int k = 0; k < p->n_held; k++)
        if (p->ranks[k].rank == rank) rs = &p->ranks[k];
    if (!rs) return m;
    m = loom__runner_memory(rs->runner);
    if (rs->eval_runner) {  // its own arena and buffers (parameters are shared)
        loom_memory_stats e = loom__runner_memory(rs->eval_runner);
        m.activations += e.activations, m.inputs += e.inputs, m.buffers += e.buffers;
    }
    for (int k = 0; k < LOOM_PARALLEL_INPUTS; k++)
        if (rs->batch[k]) m.buffers += (size_t)loom__value_numel(rs->lg.graph, rs->inputs[k]) *
                                       (size_t)p->micros * 4;
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
    if (p->pp > 1)
        fprintf(f, "device allocation: %d ranks = %d unit%s x %d pipeline ranks x %d device%s per "
                "stage, policy %s, schedule %s, %d micro-batch%s, comm %s%s\n", p->nranks,
                p->units, p->units > 1 ? "s (data parallel)" : "", p->pp, p->tp,
                p->tp > 1 ? "s" : "", loom_policy_name(p->cc.policy),
                loom_schedule_name(p->cc.pipeline_scheduler), p->nmicros,
                p->nmicros > 1 ? "es" : "", loom_comm_kind_name(p->cc.comm),
                p->cc.use_zero && p->units > 1 ? ", ZeRO-1" : "");
    else
        fprintf(f, "device allocation: %d ranks = %d unit%s x %d devices, policy %s, comm %s%s\n",
                p->nranks, p->units, p->units > 1 ? "s (data parallel)" : "", p->parts,
                loom_policy_name(p->cc.policy), loom_comm_kind_name(p->cc.comm),
                p->cc.use_zero && p->units > 1 ? ", ZeRO-1" : "");
    enum { SHOWN = 8 };
    int shown = p->nranks < SHOWN ? p->nranks : SHOWN;
    fprintf(f, "  %-28s", "module");
    for (int r = 0; r < shown; r++) fprintf(f, " %7s%d", "rank", r);
    if (shown < p->nranks) fprintf(f, "  ...");
    fputc('\n', f);
    // The shown ranks this process holds (all of them on the local comm): each one's share of a
    // module group comes from its own leaves; '-' for another process's ranks and for groups a
    // rank holds nothing of (other pipeline stages).
    const rank_state *held[SHOWN] = {0};
    for (int k = 0; k < p->n_held; k++)
        if (p->ranks[k].rank < shown) held[p->ranks[k].rank] = &p->ranks[k];
    const loom_graph *g = p->global;
    char group[256] = "", prev[256] = "";
    double total = 0, have[SHOWN] = {0};
    int any[SHOWN] = {0};
    for (int v = 0; v <= g->n_values; v++) {
        const loom_value_info *gv = v < g->n_values ? &g->values[v] : NULL;
        if (gv && gv->role != LOOM_ROLE_PARAM) continue;
        if (gv) module_group(gv->name, group, sizeof group);
        if (prev[0] && (!gv || strcmp(group, prev) != 0)) {
            fprintf(f, "  %-28s", prev);
            for (int r = 0; r < shown; r++) {
                char cell[16];
                if (!held[r] || !any[r]) snprintf(cell, sizeof cell, "-");
                else if (have[r] >= total) snprintf(cell, sizeof cell, "all");
                else snprintf(cell, sizeof cell, "%.0f%%", 100.0 * have[r] / total);
                fprintf(f, " %8s", cell);
                have[r] = 0, any[r] = 0;
            }
            fputc('\n', f);
            total = 0;
        }
        if (!gv) break;
        snprintf(prev, sizeof prev, "%s", group);
        total += (double)loom__value_numel(g, v);
        for (int r = 0; r < shown; r++) {
            const loom_local_leaf *leaf = held[r] ? find_leaf(held[r], v) : NULL;
            if (!leaf) continue;
            any[r] = 1;
            have[r] += (double)loom__value_numel(held[r]->lg.graph, leaf->local);
        }
    }
    if (p->pp == 1) {  // every rank of a unit holds an equal share
        loom_memory_stats m = loom_parallel_memory(p, p->ranks[0].rank);
        fprintf(f, "  per rank: parameters %.2f MB, gradients %.2f MB, optimizer state %.2f MB, "
                "activations %.2f MB (planned)\n", m.parameters / 1e6, m.gradients / 1e6,
                m.optimizer / 1e6, m.activations / 1e6);
        return;
    }
    // Pipelines: the stages differ; one line per pipeline rank of the first unit held here.
    for (int k = 0; k < p->n_held; k++) {
        const rank_state *rs = &p->ranks[k];
        if (rs->unit != 0 || rs->tp_index != 0) continue;
        loom_memory_stats m = loom_parallel_memory(p, rs->rank);
        char who[64];
        if (p->tp > 1) snprintf(who, sizeof who, "ranks %d-%d, each", rs->rank, rs->rank + p->tp - 1);
        else snprintf(who, sizeof who, "rank %d", rs->rank);
        fprintf(f, "  pipeline rank %d (%s): parameters %.2f MB, gradients %.2f MB, optimizer "
                "state %.2f MB, activations %.2f MB (planned)\n", rs->pipe_rank, who,
                m.parameters / 1e6, m.gradients / 1e6, m.optimizer / 1e6, m.activations / 1e6);
    }
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
