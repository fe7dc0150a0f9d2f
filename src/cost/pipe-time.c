// Pipeline step time: the ranks' schedules (src/lower/schedule.c) replayed in continuous time,
// each pass as early as its rank and the passes it depends on allow (list scheduling).

#include "cost/pipe-time.h"

#include "core/core.h"
#include "lower/schedule.h"

#include <float.h>
#include <stdbool.h>

typedef struct pass_end {
    double forward, backward;  // when the pass ends; -1 until it is scheduled
} pass_end;

typedef struct pipe_sim {
    loom_schedule kind;
    int ranks, micros, stages;
    bool train;
    const double *forward_s, *backward_s;
    double transfer;             // between adjacent virtual stages: always on another rank when
                                 // ranks > 1, on the same one otherwise
    loom_pipe_action **actions;  // per rank, in schedule order
    int *count, *next;           // per rank: its number of actions and the next one to run
    double *rank_free;           // per rank: when its last scheduled pass ends
    pass_end *ends;              // [micro * stages + stage]: a micro-batch's passes side by side
    int *pending;                // a stack of the ranks to look at again, each at most once
    bool *is_pending;            // per rank: on the stack
} pipe_sim;

static bool is_duration(double s) { return s >= 0 && s <= DBL_MAX; }  // false for NaN and inf

static loom_status check_args(loom_schedule kind, const double *forward_s,
                              const double *backward_s, double p2p_s, int train,
                              const loom_pipe_timing *out) {
    if (!out || !forward_s)
        return loom__error(LOOM_ERR_INVALID, "pipeline timing: %s is NULL; pass %s",
                           out ? "forward_s" : "out", out ? "one forward time per virtual "
                           "stage" : "a loom_pipe_timing to fill");
    if (train && !backward_s)
        return loom__error(LOOM_ERR_INVALID, "pipeline timing: backward_s is NULL with train "
                           "set; pass one backward time per virtual stage, or train = 0");
    if (!train && kind != LOOM_SCHEDULE_INFER_PIPE)
        return loom__error(LOOM_ERR_INVALID, "pipeline timing: train = 0 runs forwards only; "
                           "use schedule infer_pipe, not %s", loom_schedule_name(kind));
    if (train && kind == LOOM_SCHEDULE_INFER_PIPE)
        return loom__error(LOOM_ERR_INVALID, "pipeline timing: schedule infer_pipe has no "
                           "backwards; set train = 0, or use 1f1b, gpipe or 1f1b_interleaved");
    if (!is_duration(p2p_s))
        return loom__error(LOOM_ERR_INVALID, "pipeline timing: p2p_s %g is not a duration; "
                           "pass a finite transfer time >= 0 seconds", p2p_s);
    return LOOM_OK;
}

static loom_status check_stage_times(const pipe_sim *sim) {
    for (int s = 0; s < sim->stages; s++) {
        if (!is_duration(sim->forward_s[s]))
            return loom__error(LOOM_ERR_INVALID, "pipeline timing: forward_s[%d] = %g; stage "
                               "times must be finite and >= 0 seconds", s, sim->forward_s[s]);
        if (sim->train && !is_duration(sim->backward_s[s]))
            return loom__error(LOOM_ERR_INVALID, "pipeline timing: backward_s[%d] = %g; stage "
                               "times must be finite and >= 0 seconds", s, sim->backward_s[s]);
    }
    return LOOM_OK;
}

static void sim_free(pipe_sim *sim) {
    for (int r = 0; sim->actions && r < sim->ranks; r++) loom__free(sim->actions[r]);
    loom__free(sim->actions);
    loom__free(sim->count);
    loom__free(sim->next);
    loom__free(sim->rank_free);
    loom__free(sim->ends);
    loom__free(sim->pending);
    loom__free(sim->is_pending);
}

// Loads every rank's schedule (rank 0's first: it checks kind, ranks, chunks and micros) and
// allocates the per-rank and per-pass state.
static loom_status sim_init(pipe_sim *sim, int chunks) {
    loom_pipe_action *first = NULL;
    int first_count = 0;
    LOOM_CHECK(loom__schedule_actions(sim->kind, sim->ranks, chunks, sim->micros, 0, &first,
                                      &first_count));
    sim->stages = sim->ranks * chunks;
    sim->actions = loom__calloc((size_t)sim->ranks, sizeof *sim->actions);
    sim->count = loom__calloc((size_t)sim->ranks, sizeof *sim->count);
    if (!sim->actions || !sim->count) {
        loom__free(first);
        return LOOM_ERR_NOMEM;
    }
    sim->actions[0] = first;
    sim->count[0] = first_count;
    for (int r = 1; r < sim->ranks; r++)
        LOOM_CHECK(loom__schedule_actions(sim->kind, sim->ranks, chunks, sim->micros, r,
                                          &sim->actions[r], &sim->count[r]));
    LOOM_CHECK(check_stage_times(sim));
    size_t passes = (size_t)sim->stages * (size_t)sim->micros;
    sim->next = loom__calloc((size_t)sim->ranks, sizeof *sim->next);
    sim->rank_free = loom__calloc((size_t)sim->ranks, sizeof *sim->rank_free);
    sim->ends = loom__calloc(passes, sizeof *sim->ends);  // checks the size's overflow
    sim->pending = loom__malloc((size_t)sim->ranks * sizeof *sim->pending);
    sim->is_pending = loom__calloc((size_t)sim->ranks, sizeof *sim->is_pending);
    if (!sim->next || !sim->rank_free || !sim->ends || !sim->pending || !sim->is_pending)
        return LOOM_ERR_NOMEM;
    for (size_t i = 0; i < passes; i++) sim->ends[i] = (pass_end){-1, -1};
    return LOOM_OK;
}

// When the inputs of pass x on rank r are there, or -1 while a pass it needs has not run.
static double inputs_ready(const pipe_sim *sim, int r, loom_pipe_action x) {
    int s = x.chunk * sim->ranks + r;
    const pass_end *e = &sim->ends[(size_t)x.micro * (size_t)sim->stages + (size_t)s];
    if (!x.backward) {
        if (s == 0) return 0;
        return e[-1].forward < 0 ? -1 : e[-1].forward + sim->transfer;
    }
    double own = e->forward;
    if (own < 0 || s == sim->stages - 1) return own;
    double grad = e[1].backward;
    if (grad < 0) return -1;
    grad += sim->transfer;
    return grad > own ? grad : own;
}

// Runs rank r's next passes while their inputs are there; returns how many ran.
static int advance_rank(pipe_sim *sim, int r) {
    int ran = 0;
    while (sim->next[r] < sim->count[r]) {
        loom_pipe_action x = sim->actions[r][sim->next[r]];
        double ready = inputs_ready(sim, r, x);
        if (ready < 0) break;
        int s = x.chunk * sim->ranks + r;
        double start = ready > sim->rank_free[r] ? ready : sim->rank_free[r];
        double end = start + (x.backward ? sim->backward_s : sim->forward_s)[s];
        pass_end *e = &sim->ends[(size_t)x.micro * (size_t)sim->stages + (size_t)s];
        *(x.backward ? &e->backward : &e->forward) = end;
        sim->rank_free[r] = end;
        sim->next[r]++;
        ran++;
    }
    return ran;
}

// Marks rank r for another look unless it is marked already.
static void push_rank(pipe_sim *sim, int r, int *top) {
    if (sim->is_pending[r]) return;
    sim->is_pending[r] = true;
    sim->pending[(*top)++] = r;
}

// A pass only unblocks passes of the adjacent virtual stages, which run on the adjacent ranks,
// so after a rank advances only its two neighbours are looked at again: each pass is scheduled
// once and each look follows an advance, O(passes + ranks) in all. The order of the looks does
// not change the times: a pass starts when its rank's previous pass and its inputs have ended.
static loom_status run_all(pipe_sim *sim) {
    int p = sim->ranks, top = 0;
    for (int r = p - 1; r >= 0; r--) push_rank(sim, r, &top);
    while (top > 0) {
        int r = sim->pending[--top];
        sim->is_pending[r] = false;
        if (!advance_rank(sim, r)) continue;
        push_rank(sim, r + 1 < p ? r + 1 : 0, &top);
        push_rank(sim, r > 0 ? r - 1 : p - 1, &top);
    }
    for (int r = 0; r < p; r++)
        if (sim->next[r] < sim->count[r])
            return loom__error(LOOM_ERR_INTERNAL, "pipeline timing: %s ranks %d micros %d "
                               "deadlocks at rank %d action %d of %d; the schedule's order is "
                               "invalid (a bug in src/lower/schedule.c)",
                               loom_schedule_name(sim->kind), p, sim->micros, r, sim->next[r],
                               sim->count[r]);
    return LOOM_OK;
}

static void fill_timing(const pipe_sim *sim, int chunks, loom_pipe_timing *out) {
    out->makespan = out->busy_max = 0;
    out->in_flight_max = 0;
    for (int r = 0; r < sim->ranks; r++) {
        double busy = 0;
        for (int c = 0; c < chunks; c++) {
            int s = c * sim->ranks + r;
            busy += sim->micros * (sim->forward_s[s] + (sim->train ? sim->backward_s[s] : 0));
        }
        int held = loom__schedule_max_in_flight(sim->actions[r], sim->count[r]);
        if (out->in_flight) out->in_flight[r] = held;
        if (held > out->in_flight_max) out->in_flight_max = held;
        if (busy > out->busy_max) out->busy_max = busy;
        if (sim->rank_free[r] > out->makespan) out->makespan = sim->rank_free[r];
    }
}

loom_status loom__pipe_simulate(loom_schedule kind, int ranks, int chunks, int micros,
                                const double *forward_s, const double *backward_s, double p2p_s,
                                int train, loom_pipe_timing *out) {
    LOOM_CHECK(check_args(kind, forward_s, backward_s, p2p_s, train, out));
    pipe_sim sim = {
        .kind = kind, .ranks = ranks, .micros = micros, .train = train != 0,
        .forward_s = forward_s, .backward_s = backward_s, .transfer = ranks > 1 ? p2p_s : 0,
    };
    loom_status st = sim_init(&sim, chunks);
    if (st == LOOM_OK) st = run_all(&sim);
    if (st == LOOM_OK) fill_timing(&sim, chunks, out);
    sim_free(&sim);
    return st;
}
