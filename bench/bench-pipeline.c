// Pipeline-parallel benchmark on the `local` communicator (ranks are threads of this process,
// one OpenMP thread each):
//
//  1. The bubble of each schedule (gpipe, 1f1b, 1f1b_interleaved with 2 chunks) for 2 and 4
//     stages and 4 and 8 micro-batches, measured from the Chrome trace that
//     loom_parallel_write_trace writes (the user-visible artifact, parsed back with jansson),
//     next to the ideal (p-1)/(m+p-1), or (p-1)/(v*m+p-1) with v chunks per rank.
//  2. Step time of pp2 x tp2, tp4, dp4 (and pp2 x dp2, pp4), 4 ranks each on the same model and
//     global batch, as ratios to dp4 measured in the same run, with one device for reference.
//
//   ./build/bench/bench-pipeline [--steps 5] [--rounds 3] [--batch 16] [--seq 64] [--layers 8]
//                                [--embd 128] [--vocab 2048] [--trace-dir DIR] [--verbose]
//
// Model: GPT-2 shaped (wte tied to lm_head), random init, n_embd / 32 heads. Every configuration
// runs a warm-up step and `steps` timed steps (median), `rounds` times in turn; the best round
// counts. The traces of the best rounds stay in DIR (default $TMPDIR or /tmp) as
// bench-pipeline-pp<P>-m<M>-<schedule>.json, for Perfetto or chrome://tracing. The last line
// says how busy the rest of the machine was meanwhile.
//
// Bubble measures, per rank over one step (its first event's start to its last event's end),
// averaged over the ranks; the median over the timed steps:
//   span:  1 - busy / span, busy = forward + backward + recompute events. Everything else counts
//          as bubble: waiting for peers, but also time the OS gave the rank's core to another
//          rank (idle gaps, stretched kernels) and the step's non-pipeline work (gradient norm,
//          tied-embedding all-reduce, optimizer).
//   wait:  blocked / (busy + blocked), blocked = recv events (waiting for the previous stage's
//          activation or the next stage's gradient) + the collectives that end the step
//          (tied_sync, dp_sync, clip_grads: where a stage that finished its last backward waits
//          for the others). Idle gaps, sends and the optimizer are left out of both sides.
//   model: what the measured stage times alone explain (see measure).
//   imbalance: the busiest rank's busy time over the mean.
// With more ranks than cores (pp4 on 2 cores) none of these is a property of the schedule: the
// ranks' waits are filled by other ranks' compute and a runnable rank may wait for a core.

#include "bench-util.h"
#include "loom/parallel.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int steps = 5, B = 16, T = 64, n_layer = 8, n_embd = 128, vocab = 2048, verbose = 0;
static const char *trace_dir = NULL;
static int32_t *tokens, *targets;

static void die(const char *what) {
    fprintf(stderr, "bench-pipeline: %s: %s\n", what, loom_last_error());
    exit(1);
}

typedef struct config {
    const char *label;
    loom_policy policy;
    int plan, runtime, threads;
    int pp, micros, chunks;
    loom_schedule schedule;
} config;

// Build the plan, run a warm-up step and `steps` timed steps; median ms/step. With trace_path,
// the timeline of every step (warm-up included) is written there.
static double run(loom_model_t m, const config *c, const char *trace_path) {
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = c->policy;
    cc.plan_ndevices = c->plan;
    cc.runtime_ndevices = c->runtime;
    cc.pipeline_nstages = c->pp;
    cc.pipeline_nmicros = c->micros;
    cc.pipeline_scheduler = c->schedule;
    cc.pipeline_nchunks = c->chunks;
    cc.timeout_s = 120;
    loom_train_config tc = loom_train_config_default();
    tc.batch = B;
    tc.seq = T;
    tc.lr = 1e-4f;
    tc.threads = c->threads;
    tc.trace = trace_path != NULL;
    loom_parallel_t p;
    if (loom_parallelize(m, &cc, &tc, &p) < 0) die(c->label);
    loom_step_stats s;
    if (loom_parallel_step(p, tokens, targets, &s) < 0) die(c->label);  // warm-up
    double ms[64];
    for (int i = 0; i < steps; i++) {
        if (loom_parallel_step(p, tokens, targets, &s) < 0) die(c->label);
        ms[i] = s.seconds * 1e3;
    }
    if (trace_path && loom_parallel_write_trace(p, trace_path) < 0) die(trace_path);
    loom_parallel_free(p);
    return bench_median(ms, steps);
}

// ---- the trace -------------------------------------------------------------------------------

typedef enum kind { K_BUSY, K_RECV, K_SEND, K_COLL, K_IDLE, K_OTHER, K_COUNT } kind;
static const char *kind_names[K_COUNT] = {"busy", "recv", "send", "coll", "idle", "other"};

typedef struct event {
    double ts, dur;  // microseconds
    kind k;
    int step_start;  // zero_grads: the first instruction of every training step
    int layer;       // forward events: h.N's N, -2 embeddings, -3 lm_head, else -1
} event;

// Which part of the model a forward event's module ("... @h.3.attn.c_attn") belongs to.
static int layer_of(const char *name) {
    const char *at = strrchr(name, '@');
    if (!at) return -1;
    if (!strncmp(at, "@h.", 3)) return atoi(at + 3);
    if (!strncmp(at, "@wte", 4) || !strncmp(at, "@wpe", 4)) return -2;
    if (!strncmp(at, "@lm_head", 8)) return -3;
    return -1;
}

typedef struct track {
    event *ev;
    int n, cap;
} track;

static kind classify(const char *name, const char *cat) {
    if (!strcmp(cat, "forward") || !strcmp(cat, "backward") || !strcmp(cat, "recompute"))
        return K_BUSY;
    if (!strcmp(cat, "p2p")) return strncmp(name, "recv", 4) == 0 ? K_RECV : K_SEND;
    if (!strcmp(cat, "comm") || !strcmp(name, "clip_grads")) return K_COLL;
    if (!strcmp(cat, "idle")) return K_IDLE;
    return K_OTHER;
}

// Read the trace's complete ("X") events into one track per rank (tid), in file order, which
// is each rank's execution order.
static int read_trace(const char *path, track **out) {
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    json_t *events = root ? json_object_get(root, "traceEvents") : NULL;
    if (!json_is_array(events)) {
        fprintf(stderr, "bench-pipeline: %s: not a trace (%s)\n", path, err.text);
        exit(1);
    }
    int nranks = 0;
    track *tracks = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        const char *ph = json_string_value(json_object_get(e, "ph"));
        if (!ph || strcmp(ph, "X") != 0) continue;
        int tid = (int)json_integer_value(json_object_get(e, "tid"));
        const char *name = json_string_value(json_object_get(e, "name"));
        const char *cat = json_string_value(json_object_get(e, "cat"));
        if (tid < 0 || tid > 1023 || !name || !cat) {
            fprintf(stderr, "bench-pipeline: %s: malformed event %zu\n", path, i);
            exit(1);
        }
        if (tid >= nranks) {
            tracks = realloc(tracks, (size_t)(tid + 1) * sizeof *tracks);
            memset(tracks + nranks, 0, (size_t)(tid + 1 - nranks) * sizeof *tracks);
            nranks = tid + 1;
        }
        track *t = &tracks[tid];
        if (t->n == t->cap) {
            t->cap = t->cap ? 2 * t->cap : 1024;
            t->ev = realloc(t->ev, (size_t)t->cap * sizeof *t->ev);
        }
        t->ev[t->n++] = (event){json_number_value(json_object_get(e, "ts")),
                                json_number_value(json_object_get(e, "dur")), classify(name, cat),
                                !strcmp(name, "zero_grads"),
                                !strcmp(cat, "forward") ? layer_of(name) : -1};
    }
    json_decref(root);
    *out = tracks;
    return nranks;
}

typedef struct account {
    double span, t[K_COUNT];  // microseconds
} account;

// Rank's time in its step `step` (0: the first in the trace): the span from the first to the last
// event of the step and the time in each kind of event inside it; *layers gets bit N for every
// h.N it ran forward, *ends bit 0 for the embeddings and bit 1 for lm_head.
static account account_step(const track *t, int step, uint64_t *layers, int *ends) {
    account a;
    memset(&a, 0, sizeof a);
    int first = -1, last = t->n, seen = -1;
    for (int i = 0; i < t->n; i++)
        if (t->ev[i].step_start && ++seen == step) {
            first = i;
            break;
        }
    if (first < 0) return a;
    for (int i = first + 1; i < t->n; i++)
        if (t->ev[i].step_start) {
            last = i;
            break;
        }
    double begin = t->ev[first].ts, end = begin;
    for (int i = first; i < last; i++)
        if (t->ev[i].k != K_IDLE && t->ev[i].ts + t->ev[i].dur > end)
            end = t->ev[i].ts + t->ev[i].dur;
    *layers = 0;
    *ends = 0;
    for (int i = first; i < last; i++) {
        const event *e = &t->ev[i];
        if (e->ts + e->dur <= end + 1e-3) a.t[e->k] += e->dur;  // not the gap after the step
        if (e->layer >= 0 && e->layer < 64) *layers |= (uint64_t)1 << e->layer;
        if (e->layer == -2) *ends |= 1;
        if (e->layer == -3) *ends |= 2;
    }
    a.span = end - begin;
    return a;
}

typedef struct bubble {
    double span, wait, imbalance, model;  // median over the timed steps
    account last[16];                     // per rank, the last step
    uint64_t layers[16];
    int ends[16];
} bubble;

// The bubble measures of the timed steps (every step of the trace but the first, the warm-up).
// model: the bubble that the measured stage times alone explain (free communication, no other
// work): with t_s a rank's busy time per micro-batch, a flow shop of m equal micro-batches
// through the stages takes (m-1) max_s t_s + sum_s t_s (gpipe and 1f1b; equal t_s give the
// ideal formula). -1 for interleaved schedules (v > 1), whose fill and drain depend on the
// times of single chunks, which the ranks' totals do not tell.
static bubble measure(const char *path, int nranks_expected, int micros, int v) {
    track *tracks;
    int nranks = read_trace(path, &tracks);
    if (nranks != nranks_expected || nranks > 16) {
        fprintf(stderr, "bench-pipeline: %s: %d tracks, expected %d\n", path, nranks,
                nranks_expected);
        exit(1);
    }
    bubble b;
    memset(&b, 0, sizeof b);
    double span[64], wait[64], imbalance[64], model[64];
    for (int s = 0; s < steps; s++) {
        double busy_max = 0, busy_sum = 0;
        span[s] = wait[s] = 0;
        for (int r = 0; r < nranks; r++) {
            account a = account_step(&tracks[r], s + 1, &b.layers[r], &b.ends[r]);
            double busy = a.t[K_BUSY], blocked = a.t[K_RECV] + a.t[K_COLL];
            if (a.span <= 0 || busy <= 0) {
                fprintf(stderr, "bench-pipeline: %s: rank %d has no step %d\n", path, r, s + 1);
                exit(1);
            }
            span[s] += (1.0 - busy / a.span) / nranks;
            wait[s] += blocked / (busy + blocked) / nranks;
            busy_sum += busy;
            if (busy > busy_max) busy_max = busy;
            if (s == steps - 1) b.last[r] = a;
        }
        imbalance[s] = busy_max / (busy_sum / nranks);
        double makespan = ((micros - 1) * busy_max + busy_sum) / micros;
        model[s] = 1.0 - busy_sum / nranks / makespan;
    }
    b.span = bench_median(span, steps);
    b.wait = bench_median(wait, steps);
    b.imbalance = bench_median(imbalance, steps);
    b.model = v > 1 ? -1 : bench_median(model, steps);
    for (int r = 0; r < nranks; r++) free(tracks[r].ev);
    free(tracks);
    return b;
}

static void print_accounts(const bubble *b, int nranks) {
    for (int r = 0; r < nranks; r++) {
        const account *a = &b->last[r];
        char parts[128] = "";
        size_t len = 0;
        if (b->ends[r] & 1) len += (size_t)snprintf(parts + len, sizeof parts - len, " emb");
        for (int l = 0; l < 64 && len < sizeof parts - 8; l++)
            if (b->layers[r] >> l & 1)
                len += (size_t)snprintf(parts + len, sizeof parts - len, " h%d", l);
        if (b->ends[r] & 2 && len < sizeof parts - 8)
            snprintf(parts + len, sizeof parts - len, " head");
        printf("      rank %d [%s]: span %.1f ms =", r, parts + 1, a->span / 1e3);
        for (int k = 0; k < K_COUNT; k++)
            printf(" %s %.1f%%", kind_names[k], 100 * a->t[k] / a->span);
        printf("\n");
    }
}

// ---- load from other processes ---------------------------------------------------------------

// CPU seconds this machine spent outside this process (other processes, the kernel's own work,
// time stolen by the hypervisor), and this process's own, since boot.
static void cpu_seconds(double *others, double *self) {
    double tick = (double)sysconf(_SC_CLK_TCK);
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) != 8)
            memset(v, 0, sizeof v);
        fclose(f);
    }
    double busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick;  // all but idle, iowait
    unsigned long long ut = 0, st = 0;
    char buf[1024];
    f = fopen("/proc/self/stat", "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        const char *p = strrchr(buf, ')');  // fields after the command name: state is field 3
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                        &st) != 2)
            ut = st = 0;
    }
    *self = (double)(ut + st) / tick;
    *others = busy - *self;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    int rounds = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) n_layer = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--embd") && i + 1 < argc) n_embd = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc) vocab = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--trace-dir") && i + 1 < argc) trace_dir = argv[++i];
        else if (!strcmp(argv[i], "--verbose")) verbose = 1;
        else {
            fprintf(stderr, "usage: bench-pipeline [--steps N] [--rounds R] [--batch B] [--seq T] "
                            "[--layers L] [--embd C] [--vocab V] [--trace-dir DIR] [--verbose]\n");
            return 2;
        }
    }
    if (steps < 1 || steps > 64 || rounds < 1 || rounds > 16 || T < 1 || T > 1024 || B < 8 ||
        B % 8 || n_layer < 8 || n_layer > 64 || n_embd < 32 || n_embd % 32 || vocab < 8 ||
        vocab % 4) {
        fprintf(stderr, "bench-pipeline: need 1 <= steps <= 64, 1 <= rounds <= 16, 1 <= T <= 1024, "
                        "B a multiple of 8, 8 <= layers <= 64, embd a multiple of 32, vocab a "
                        "multiple of 4\n");
        return 2;
    }
    if (!trace_dir) trace_dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char json[256];
    snprintf(json, sizeof json,
             "{\"model_type\": \"gpt2\", \"n_layer\": %d, \"n_embd\": %d, \"n_head\": %d, "
             "\"n_positions\": %d, \"vocab_size\": %d}", n_layer, n_embd, n_embd / 32, T, vocab);
    loom_model_config cfg;
    loom_model_t m;
    if (loom_model_config_parse(json, "bench-pipeline", &cfg) < 0 ||
        loom_model_create(&cfg, 7, &m) < 0)
        die("model");
    tokens = malloc((size_t)B * T * sizeof(int32_t));
    targets = malloc((size_t)B * T * sizeof(int32_t));
    uint32_t s = 1;
    for (int i = 0; i < B * T; i++) {
        s = s * 1664525u + 1013904223u;
        tokens[i] = (int32_t)((s >> 8) % (uint32_t)vocab);
        targets[i] = (int32_t)((s >> 4) % (uint32_t)vocab);
    }
    double others0, self0, t0 = now();
    cpu_seconds(&others0, &self0);
    printf("GPT-2 shaped, %d layers, %d wide, %d heads, vocabulary %d, %.2fM parameters; global "
           "batch %d x T=%d; %ld cores online\nms/step: the median of %d steps after a warm-up, "
           "best of %d rounds over all configurations\n", n_layer, n_embd, n_embd / 32, vocab,
           (double)loom_model_n_params(m) / 1e6, B, T, sysconf(_SC_NPROCESSORS_ONLN), steps,
           rounds);

    // 1. Pipeline configurations, traced: pp 2 and 4, m 4 and 8, every schedule.
    typedef struct pipe_run {
        config c;
        int v;
        char label[32], path[512];
        double ms;
        bubble bu;
    } pipe_run;
    pipe_run pr[12];
    int np = 0;
    static const int pps[] = {2, 4}, ms[] = {4, 8};
    static const loom_schedule scheds[] = {LOOM_SCHEDULE_GPIPE, LOOM_SCHEDULE_1F1B,
                                           LOOM_SCHEDULE_1F1B_INTERLEAVED};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int k = 0; k < 3; k++) {
                int pp = pps[a], micros = ms[b];
                int v = scheds[k] == LOOM_SCHEDULE_1F1B_INTERLEAVED ? 2 : 1;
                if (v > 1 && micros % pp) continue;  // interleaving needs m % pp == 0
                pipe_run *r = &pr[np++];
                const char *name = loom_schedule_name(scheds[k]);
                snprintf(r->label, sizeof r->label, "%s", v > 1 ? "interleaved v=2" : name);
                snprintf(r->path, sizeof r->path, "%s/bench-pipeline-pp%d-m%d-%s.json", trace_dir,
                         pp, micros, name);
                r->c = (config){r->label, LOOM_POLICY_PP, pp, pp, 1, pp, micros, v, scheds[k]};
                r->v = v;
                r->ms = 1e300;
            }
    // 2. Step time, 4 ranks each, against dp4.
    config cs[] = {
        {"1 device, 2 threads", LOOM_POLICY_DP, 1, 1, 2, 1, 1, 0, LOOM_SCHEDULE_1F1B},
        {"1 device, 1 thread", LOOM_POLICY_DP, 1, 1, 1, 1, 1, 0, LOOM_SCHEDULE_1F1B},
        {"dp4", LOOM_POLICY_DP, 1, 4, 1, 1, 1, 0, LOOM_SCHEDULE_1F1B},
        {"tp4", LOOM_POLICY_TP, 4, 4, 1, 1, 1, 0, LOOM_SCHEDULE_1F1B},
        {"pp2 x tp2, 1f1b m=4", LOOM_POLICY_HYBRID, 4, 4, 1, 2, 4, 0, LOOM_SCHEDULE_1F1B},
        {"pp2 x tp2, 1f1b m=8", LOOM_POLICY_HYBRID, 4, 4, 1, 2, 8, 0, LOOM_SCHEDULE_1F1B},
        {"pp2 x dp2, 1f1b m=4", LOOM_POLICY_PP, 2, 4, 1, 2, 4, 0, LOOM_SCHEDULE_1F1B},
        {"pp4, 1f1b m=8", LOOM_POLICY_PP, 4, 4, 1, 4, 8, 0, LOOM_SCHEDULE_1F1B},
    };
    enum { NC = (int)(sizeof cs / sizeof cs[0]), DP4 = 2 };
    double best[NC];
    for (int i = 0; i < NC; i++) best[i] = 1e300;

    // `rounds` passes over every configuration in turn, so that a burst of load from elsewhere
    // hits one pass rather than one configuration; each keeps its best pass (the lowest median
    // step time) and, for pipelines, that pass's trace and bubbles.
    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < np; i++) {
            pipe_run *r = &pr[i];
            char tmp[520];
            snprintf(tmp, sizeof tmp, "%s.tmp", r->path);
            double t = run(m, &r->c, tmp);
            if (t < r->ms) {
                r->ms = t;
                r->bu = measure(tmp, r->c.pp, r->c.micros, r->v);
                if (rename(tmp, r->path) != 0) {
                    perror(r->path);
                    return 1;
                }
            } else {
                remove(tmp);
            }
        }
        for (int i = 0; i < NC; i++) {
            double t = run(m, &cs[i], NULL);
            if (t < best[i]) best[i] = t;
        }
    }

    printf("\n1. Pipeline bubble per schedule, 1 thread per rank (traces in %s)\n", trace_dir);
    printf("  %-3s %-3s %-16s %9s %8s %8s %8s %8s %10s\n", "pp", "m", "schedule", "ms/step",
           "ideal", "model", "span", "wait", "imbalance");
    for (int i = 0; i < np; i++) {
        const pipe_run *r = &pr[i];
        int pp = r->c.pp, micros = r->c.micros;
        double ideal = (double)(pp - 1) / (r->v * micros + pp - 1);
        char model[16] = "-";
        if (r->bu.model >= 0) snprintf(model, sizeof model, "%.1f%%", 100 * r->bu.model);
        printf("  %-3d %-3d %-16s %9.1f %7.1f%% %8s %7.1f%% %7.1f%% %9.2fx\n", pp, micros,
               r->label, r->ms, 100 * ideal, model, 100 * r->bu.span, 100 * r->bu.wait,
               r->bu.imbalance);
        if (verbose) print_accounts(&r->bu, pp);
    }
    printf("\n2. Step time, 4 ranks (1 thread each), same model and global batch\n");
    printf("  %-22s %9s %10s %10s\n", "config", "ms/step", "tokens/s", "/ dp4");
    for (int i = 0; i < NC; i++)
        printf("  %-22s %9.1f %10.0f %9.2fx\n", cs[i].label, best[i],
               (double)B * T / (best[i] / 1e3), best[i] / best[DP4]);

    double others1, self1, wall = now() - t0;
    cpu_seconds(&others1, &self1);
    double others = (others1 - others0) / wall;
    printf("\n%.1f s; this process used %.2f cores on average, the rest of the machine %.2f "
           "(other processes, kernel, hypervisor steal)%s\n", wall, (self1 - self0) / wall,
           others > 0 ? others : 0.0,
           others > 0.1 ? ": busy, the numbers above are disturbed; rerun on a quiet machine" : "");
    free(tokens), free(targets);
    loom_model_free(m);
    return 0;
}
