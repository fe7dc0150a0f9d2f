// Pipeline step time (src/cost/pipe-time.c): makespans against closed forms and hand-worked
// timelines for gpipe, 1f1b, interleaved 1f1b and forward-only pipelines, with and without
// transfer time; activations held per rank; bad settings refused naming the setting.

#include "core/core.h"
#include "cost/pipe-time.h"
#include "testutil.h"

#include <string.h>
#include <time.h>

#define MAX_STAGES 1024

static const loom_schedule TRAIN_KINDS[] = {LOOM_SCHEDULE_GPIPE, LOOM_SCHEDULE_1F1B};

static int near(double got, double want) {
    return fabs(got - want) <= 1e-9 * (fabs(want) > 1 ? fabs(want) : 1);
}

static void fill(double *x, int n, double value) {
    for (int i = 0; i < n; i++) x[i] = value;
}

// The timing of one step, or makespan -1 after a failed check.
static loom_pipe_timing simulate(loom_schedule kind, int p, int v, int m, const double *f,
                                 const double *b, double p2p, int train, int *in_flight) {
    loom_pipe_timing t = {.makespan = -1, .in_flight = in_flight};
    loom_status st = loom__pipe_simulate(kind, p, v, m, f, b, p2p, train, &t);
    CHECK_MSG(st == LOOM_OK, "%s p %d v %d m %d: status %d %s", loom_schedule_name(kind), p, v,
              m, st, loom_last_error());
    if (st != LOOM_OK) t.makespan = -1;
    return t;
}

#define CHECK_TIME(got, want, kind, p, v, m)                                                 \
    CHECK_MSG(near(got, want), "%s p %d v %d m %d: %s %.9g, expected %.9g",                  \
              loom_schedule_name(kind), p, v, m, #got, got, want)

// One rank runs every pass back to back, whatever the order: m (f + b); chunks on one rank
// pass activations to themselves, so no transfer time is added.
static void one_rank(void) {
    double f[2] = {1.25, 0.5}, b[2] = {2.5, 3};
    for (int k = 0; k < 2; k++)
        for (int m = 1; m <= 7; m += 3) {
            loom_pipe_timing t = simulate(TRAIN_KINDS[k], 1, 1, m, f, b, 0.75, 1, NULL);
            CHECK_TIME(t.makespan, m * 3.75, TRAIN_KINDS[k], 1, 1, m);
            CHECK_TIME(t.busy_max, m * 3.75, TRAIN_KINDS[k], 1, 1, m);
        }
    loom_pipe_timing t = simulate(LOOM_SCHEDULE_INFER_PIPE, 1, 1, 4, f, NULL, 0, 0, NULL);
    CHECK_TIME(t.makespan, 4 * 1.25, LOOM_SCHEDULE_INFER_PIPE, 1, 1, 4);
    // gpipe, 1 rank, 2 chunks: m (1.25 + 0.5 + 2.5 + 3) = 7.25 m, a transfer of 10 s or not.
    for (int m = 1; m <= 3; m += 2) {
        t = simulate(LOOM_SCHEDULE_GPIPE, 1, 2, m, f, b, 10, 1, NULL);
        CHECK_TIME(t.makespan, 7.25 * m, LOOM_SCHEDULE_GPIPE, 1, 2, m);
    }
}

// Equal stages, no transfer time. gpipe: the last rank gets micro-batch 0 at (p-1) f and then
// runs its m forwards and m backwards back to back; the gradients of the last micro-batch
// then pass p-1 ranks: (p-1) f + m (f + b) + (p-1) b = (m + p - 1)(f + b). That is also the
// lower bound for any order (the last rank cannot start before (p-1) f, and p-1 backwards
// follow its last pass), and 1f1b reaches it: the bubble (p-1)(tf + tb) of cost-models.
static void equal_stages(void) {
    double fb[][2] = {{1, 2}, {1.5, 2.25}, {2, 1}}, f[4], b[4];
    for (int k = 0; k < 2; k++)
        for (int p = 2; p <= 4; p++)
            for (int m = 1; m <= 7; m++)
                for (int i = 0; i < 3; i++) {
                    fill(f, p, fb[i][0]);
                    fill(b, p, fb[i][1]);
                    loom_pipe_timing t = simulate(TRAIN_KINDS[k], p, 1, m, f, b, 0, 1, NULL);
                    double unit = fb[i][0] + fb[i][1];
                    CHECK_TIME(t.makespan, (m + p - 1) * unit, TRAIN_KINDS[k], p, 1, m);
                    CHECK_TIME(t.busy_max, m * unit, TRAIN_KINDS[k], p, 1, m);
                }
}

// A lower bound with no transfer time, for any order: stage i cannot start before micro-batch
// 0 has passed the stages before it (sum_{j<i} f_j), then runs m (f_i + b_i), and its last
// backward's gradient still passes the stages before it (sum_{j<i} b_j).
static double stage_bound(const double *f, const double *b, int p, int m) {
    double best = 0, before = 0;
    for (int i = 0; i < p; i++) {
        double through = before + m * (f[i] + b[i]);
        if (through > best) best = through;
        before += f[i] + b[i];
    }
    return best;
}

// 1f1b, 2 ranks, uneven stages, no transfer time (rank 0: F0 F1 B0 B1 ..., rank 1 alternates).
// Slow stage last, f = (1, 2), b = (2, 4):
//   m = 2: r0 F0 0-1, F1 1-2; r1 F0 1-3, B0 3-7, F1 7-9, B1 9-13; r0 B0 7-9, B1 13-15: 15.
//   m = 3: r0 F0 0-1, F1 1-2; r1 F0 1-3, B0 3-7, F1 7-9, B1 9-13; r0 B0 7-9, F2 9-10;
//          r1 F2 13-15, B2 15-19; r0 B1 13-15, B2 19-21: 21.
// Both are sum_i (f_i + b_i) + (m-1) max_i (f_i + b_i) = 9 + 6 (m-1), the slow stage busy
// from its first pass on. That is no lower bound when the slow stage comes first:
// f = (2, 1), b = (4, 2):
//   m = 2: r0 F0 0-2, F1 2-4; r1 F0 2-3, B0 3-5, F1 5-6, B1 6-8; r0 B0 5-9, B1 9-13: 13.
//   m = 3: r0 F0 0-2, F1 2-4; r1 F0 2-3, B0 3-5, F1 5-6, B1 6-8; r0 B0 5-9, F2 9-11;
//          r1 F2 11-12, B2 12-14; r0 B1 11-15, B2 15-19: 19 (< 9 + 6 * 2 = 21).
// stage_bound gives 15, 21, 12 and 18.
static void uneven_stages(void) {
    double slow_last_f[2] = {1, 2}, slow_last_b[2] = {2, 4};
    double slow_first_f[2] = {2, 1}, slow_first_b[2] = {4, 2};
    struct {
        const double *f, *b;
        int m;
        double want;
    } cases[] = {{slow_last_f, slow_last_b, 2, 15}, {slow_last_f, slow_last_b, 3, 21},
                 {slow_first_f, slow_first_b, 2, 13}, {slow_first_f, slow_first_b, 3, 19}};
    for (int i = 0; i < 4; i++) {
        loom_pipe_timing t = simulate(LOOM_SCHEDULE_1F1B, 2, 1, cases[i].m, cases[i].f,
                                      cases[i].b, 0, 1, NULL);
        CHECK_TIME(t.makespan, cases[i].want, LOOM_SCHEDULE_1F1B, 2, 1, cases[i].m);
        CHECK_TIME(t.busy_max, cases[i].m * 6.0, LOOM_SCHEDULE_1F1B, 2, 1, cases[i].m);
    }
    double f[4] = {1, 3, 2, 0.5}, b[4] = {2, 5, 3, 1.5};
    for (int k = 0; k < 2; k++)
        for (int p = 2; p <= 4; p++)
            for (int m = p; m <= 8; m++) {
                loom_pipe_timing t = simulate(TRAIN_KINDS[k], p, 1, m, f, b, 0, 1, NULL);
                double bound = stage_bound(f, b, p, m);
                CHECK_MSG(t.makespan >= bound - 1e-9, "%s p %d m %d: makespan %g below the "
                          "bound %g", loom_schedule_name(TRAIN_KINDS[k]), p, m, t.makespan,
                          bound);
            }
}

// Transfer time d between ranks. gpipe p = 2, m = 1: f0 + d + f1 + b1 + d + b0. gpipe with
// equal stages: forwards reach rank r every f, so rank r runs them back to back from
// r (f + d); likewise the backwards: (m + p - 1)(f + b) + 2 (p-1) d.
static void transfer_time(void) {
    double f[4] = {1, 2}, b[4] = {2, 4};
    for (int k = 0; k < 2; k++) {
        loom_pipe_timing t = simulate(TRAIN_KINDS[k], 2, 1, 1, f, b, 0.5, 1, NULL);
        CHECK_TIME(t.makespan, 1 + 0.5 + 2 + 4 + 0.5 + 2, TRAIN_KINDS[k], 2, 1, 1);
    }
    fill(f, 3, 1.5);
    fill(b, 3, 2.5);
    loom_pipe_timing t = simulate(LOOM_SCHEDULE_GPIPE, 3, 1, 4, f, b, 0.25, 1, NULL);
    CHECK_TIME(t.makespan, 6 * 4.0 + 2 * 2 * 0.25, LOOM_SCHEDULE_GPIPE, 3, 1, 4);
}

// Interleaved 1f1b, v chunks of equal passes f/v, b/v per virtual stage, no transfer time.
// The last rank's first pass waits for the p-1 virtual stages before it ((p-1) f/v), it then
// runs m (f + b), and its last pass, a backward of a stage >= p-1, is followed by the
// backwards of at least p-1 stages ((p-1) b/v): makespan >= (m v + p - 1)(f + b)/v, below
// 1f1b's (m + p - 1)(f + b) by (p-1)(v-1)(f+b)/v. With f/v = 1, b/v = 2 the unit-time
// simulation of tests/test-schedule.c reaches the bound; the same holds in continuous time.
static void interleaved(void) {
    double totals[][2] = {{2, 4}, {3, 5}, {1, 1}}, f[16], b[16];
    for (int i = 0; i < 3; i++)
        for (int v = 2; v <= 4; v += 2)
            for (int p = 2; p <= 4; p += 2)
                for (int m = p; m <= 4 * p; m += p) {
                    double tf = totals[i][0], tb = totals[i][1];
                    fill(f, p * v, tf / v);
                    fill(b, p * v, tb / v);
                    loom_pipe_timing t = simulate(LOOM_SCHEDULE_1F1B_INTERLEAVED, p, v, m, f, b,
                                                  0, 1, NULL);
                    double bound = (m * v + p - 1) * (tf + tb) / v;
                    double plain = (m + p - 1) * (tf + tb);
                    CHECK_MSG(t.makespan >= bound - 1e-9 && t.makespan < plain - 1e-9,
                              "interleaved p %d v %d m %d f %g b %g: makespan %g outside [%g, "
                              "%g)", p, v, m, tf, tb, t.makespan, bound, plain);
                    if (tf / v == 1 && tb / v == 2)
                        CHECK_TIME(t.makespan, bound, LOOM_SCHEDULE_1F1B_INTERLEAVED, p, v, m);
                }
}

// Activations held: 1f1b rank r holds min(p - r, m) (rank 0 min(p, m)); gpipe every forward,
// m per chunk.
static void in_flight(void) {
    double f[8], b[8];
    fill(f, 8, 1);
    fill(b, 8, 2);
    int held[8];
    for (int m = 1; m <= 6; m++) {
        loom_pipe_timing t = simulate(LOOM_SCHEDULE_1F1B, 4, 1, m, f, b, 0, 1, held);
        CHECK(t.in_flight_max == (m < 4 ? m : 4));
        for (int r = 0; r < 4; r++)
            CHECK_MSG(held[r] == (4 - r < m ? 4 - r : m), "1f1b m %d rank %d holds %d", m, r,
                      held[r]);
        for (int v = 1; v <= 2; v++) {
            t = simulate(LOOM_SCHEDULE_GPIPE, 4, v, m, f, b, 0, 1, held);
            CHECK(t.in_flight_max == v * m);
            for (int r = 0; r < 4; r++)
                CHECK_MSG(held[r] == v * m, "gpipe v %d m %d rank %d holds %d", v, m, r,
                          held[r]);
        }
    }
}

// Forwards only, equal stages: micro-batch m-1 leaves rank 0 at m f and passes p-1 more.
static void forward_only(void) {
    double f[4];
    fill(f, 4, 1.75);
    for (int p = 1; p <= 4; p++)
        for (int m = 1; m <= 8; m++) {
            loom_pipe_timing t = simulate(LOOM_SCHEDULE_INFER_PIPE, p, 1, m, f, NULL, 0, 0, NULL);
            CHECK_TIME(t.makespan, (m + p - 1) * 1.75, LOOM_SCHEDULE_INFER_PIPE, p, 1, m);
            CHECK_TIME(t.busy_max, m * 1.75, LOOM_SCHEDULE_INFER_PIPE, p, 1, m);
            CHECK(t.in_flight_max == m);
        }
}

static void refused(loom_schedule kind, int p, int v, int m, const double *f, const double *b,
                    double p2p, int train, loom_pipe_timing *out, const char *word) {
    loom_status st = loom__pipe_simulate(kind, p, v, m, f, b, p2p, train, out);
    const char *msg = loom_last_error();
    CHECK_MSG(st < 0 && strstr(msg, word), "%s p %d v %d m %d train %d: status %d '%s' (want "
              "'%s')", loom_schedule_name(kind), p, v, m, train, st, msg, word);
}

static void errors(void) {
    double f[2] = {1, 1}, b[2] = {2, 2}, nan_f[2] = {1, NAN}, neg_b[2] = {2, -1};
    loom_pipe_timing t;
    loom_schedule k = LOOM_SCHEDULE_1F1B;
    refused(k, 0, 1, 4, f, b, 0, 1, &t, "pipeline_nstages");
    refused(k, 2, 1, 0, f, b, 0, 1, &t, "pipeline_nmicros");
    refused(k, 2, 2, 4, f, b, 0, 1, &t, "1f1b_interleaved");
    refused(LOOM_SCHEDULE_1F1B_INTERLEAVED, 2, 2, 3, f, b, 0, 1, &t, "pipeline_nmicros");
    refused(k, 2, 1, 4, NULL, b, 0, 1, &t, "forward_s");
    refused(k, 2, 1, 4, f, NULL, 0, 1, &t, "backward_s");
    refused(k, 2, 1, 4, f, b, 0, 1, NULL, "out");
    refused(k, 2, 1, 4, nan_f, b, 0, 1, &t, "forward_s[1]");
    refused(k, 2, 1, 4, f, neg_b, 0, 1, &t, "backward_s[1]");
    refused(k, 2, 1, 4, f, b, -0.5, 1, &t, "p2p_s");
    refused(k, 2, 1, 4, f, b, INFINITY, 1, &t, "p2p_s");
    refused(k, 2, 1, 4, f, b, 0, 0, &t, "infer_pipe");
    refused(LOOM_SCHEDULE_INFER_PIPE, 2, 1, 4, f, b, 0, 1, &t, "train");
    refused(LOOM_SCHEDULE_COUNT, 2, 1, 4, f, b, 0, 1, &t, "pipeline_scheduler");
}

// The plan search's largest setting: 128 ranks x 8 chunks x 2048 micro-batches, unit passes
// (f/v = 1, b/v = 2) so the interleaved bound 3 (v m + p - 1) is exact (see interleaved()).
static void large(void) {
    static double f[MAX_STAGES], b[MAX_STAGES];
    fill(f, MAX_STAGES, 1);
    fill(b, MAX_STAGES, 2);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    loom_pipe_timing t = simulate(LOOM_SCHEDULE_1F1B_INTERLEAVED, 128, 8, 2048, f, b, 0, 1, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK_TIME(t.makespan, 3.0 * (8 * 2048 + 127), LOOM_SCHEDULE_1F1B_INTERLEAVED, 128, 8, 2048);
    printf("128 ranks x 8 chunks x 2048 micro-batches: %.1f ms\n",
           (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6);
    t = simulate(LOOM_SCHEDULE_1F1B, 128, 1, 2048, f, b, 0, 1, NULL);
    CHECK_TIME(t.makespan, 3.0 * (2048 + 127), LOOM_SCHEDULE_1F1B, 128, 1, 2048);
}

int main(void) {
    one_rank();
    equal_stages();
    uneven_stages();
    transfer_time();
    interleaved();
    in_flight();
    forward_only();
    errors();
    large();
    return tu_finish();
}
