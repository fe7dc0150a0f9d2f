// loom train: train a model on a token file (llm.c .bin layout) or plain text (byte tokens).

#include "cli.h"

#include "loom/parallel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *train_usage =
    "loom train (--model-dir DIR | --model gpt2|llama [sizes]) --data FILE [--steps N] "
    "[--batch B] [--seq T] [--lr X] [options]";

static void print_help(void) {
    printf("usage: %s\n\n%s", train_usage, CLI_MODEL_HELP);
    printf("data:\n"
           "  --data FILE            token file (llm.c .bin: 256 x int32 header, uint16 tokens)\n"
           "                         or plain text, read as bytes (vocabulary 256)\n"
           "training:\n"
           "  --steps N              optimizer steps (default 20)\n"
           "  --batch B              sequences per micro-batch (default 4)\n"
           "  --seq T                tokens per sequence (default 64)\n"
           "  --grad-accum K         micro-batches per step (default 1)\n"
           "  --optimizer adamw|sgd  (default adamw)\n"
           "  --lr X                 learning rate (default 3e-4)\n"
           "  --weight-decay X       (default 0)\n"
           "  --beta1 X --beta2 X    AdamW betas (default 0.9, 0.95)\n"
           "  --eps X                AdamW epsilon (default 1e-8)\n"
           "  --momentum X           SGD momentum (default 0)\n"
           "  --grad-clip X          max global gradient norm, 0 = off (default 1.0)\n"
           "  --threads N            CPU threads (default: all cores; per rank: cores / ranks)\n"
           "  --recompute LIST       recompute these modules' forward during the backward instead\n"
           "                         of keeping their activations: module names (path suffixes,\n"
           "                         e.g. attn,mlp) or 'layers' for every layer\n"
           "parallel:\n"
           "  --devices N            ranks in all (default 1; with --pp: one copy, P); --batch is\n"
           "                         the global batch\n"
           "  --plan-devices P       ranks holding one model copy (default: 1 with --policy dp,\n"
           "                         N otherwise; with --pp S: S for pp and dp); the N / P\n"
           "                         copies run data parallel\n"
           "  --policy dp|tp|data|pp|hybrid|autodist|FILE.json\n"
           "                         inside a copy: replicate (dp), Megatron tensor parallel\n"
           "                         (tp), split every op on the batch (data), pipeline stages\n"
           "                         on one device each (pp) or tensor parallel (hybrid), or\n"
           "                         follow a plan file (see docs/parallel.md); default dp, with\n"
           "                         --pp S: pp, or hybrid when --plan-devices is a larger\n"
           "                         multiple of S; autodist: the fastest plan of the --devices\n"
           "                         that fits --mem (docs/autodist.md)\n"
           "  --mem GB               autodist: memory one device may use (default 0.8 x the\n"
           "                         device's; this machine's RAM per core for the cpu spec)\n"
           "  --device-spec NAME|FILE  autodist: the devices (default cpu, measured here)\n"
           "  --save-plan FILE       autodist: write the chosen plan (JSON)\n"
           "  --load-plan FILE       autodist: run this plan instead of searching\n"
           "  --pp S                 pipeline ranks per copy (default 1: no pipeline)\n"
           "  --micro-batches M      split each --batch into M micro-batches (default 1)\n"
           "  --schedule NAME        pipeline schedule: 1f1b (default), gpipe or 1f1b_interleaved\n"
           "  --virtual-stages V     model chunks per pipeline rank (default 2 for 1f1b_interleaved)\n"
           "  --pp-layers LIST       layers per stage, e.g. 0,-1,-1,0 (-1: share the rest evenly)\n"
           "  --pp-pivots LIST       modules where a stage may start, e.g. h.2,h.4 or layers\n"
           "  --pp-balance KIND      balance the stages by flops (default) or measured op times\n"
           "  device layout: ranks (N) = copies (N / P) x pipeline ranks (S) x devices per stage\n"
           "  (P / S); rank = copy x P + pipeline rank x (P / S) + index in the stage\n"
           "  --comm local|mpi       ranks as threads of this process (local, default) or one\n"
           "                         process per rank under mpirun (chosen by itself there)\n"
           "  --save-sharded DIR     write a sharded checkpoint (one file per rank of the first\n"
           "                         copy, parameters + optimizer state; loom merge joins it)\n"
           "  --resume DIR           continue from a sharded or merged checkpoint written under\n"
           "                         any plan (parameters, optimizer state, step)\n"
           "  --constraints FILE     partition constraints (nnScaler YAML: name, parent_module,\n"
           "                         allowed_partition_dims, replica_allowed) for any policy\n"
           "  --comm-timeout S       a rank that stops answering fails the others after S seconds\n"
           "                         (default 60)\n"
           "  --zero                 ZeRO-1: shard the optimizer state over the copies\n"
           "  --zero-groups K        K ZeRO groups, each holding one copy of the state (default 1)\n"
           "  --zero-reduce-scatter on|off  reduce-scatter gradients in a group (default on)\n"
           "output:\n"
           "  --save DIR             write a Hugging Face directory (config.json +\n"
           "                         model.safetensors) after training\n"
           "  --log-json             one JSON object per step on stdout (step, loss,\n"
           "                         grad_norm, tokens_per_s, ms)\n"
           "  --sample N             generate N tokens at the end (default 0)\n"
           "  --prompt TEXT          prompt for --sample (default: the data's first bytes)\n"
           "  --profile              print time per op at the end\n"
           "  --trace FILE.json      write a timeline of every kernel, collective and pipeline\n"
           "                         send/recv per rank (Chrome trace events; open it in\n"
           "                         Perfetto, https://ui.perfetto.dev)\n");
}

// --pp-layers: one layer count per stage (pipeline ranks x virtual stages), each an integer
// >= 0 or -1 (a share of the layers the others leave). The library checks them against the
// model.
static void check_pp_layers(const cli_ctx *c, const char *list, int stages, int chunks) {
    int n = 0;
    for (const char *p = list;; p += strcspn(p, ",") + 1) {
        size_t len = strcspn(p, ",");
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        n++;
        if (len == 0 || end != p + len || errno || v < -1 || v > 1 << 24)
            cli_usage_error(c, "--pp-layers: entry %d ('%.*s') of '%s' is not a layer count (an "
                            "integer >= 0, or -1 to share the rest)", n, (int)len, p, list);
        if (!p[len]) break;
    }
    if (n != stages * chunks)
        cli_usage_error(c, "--pp-layers '%s' has %d entr%s but there are %d stages (--pp %d x %d "
                        "virtual stage%s), one entry each", list, n, n == 1 ? "y" : "ies",
                        stages * chunks, stages, chunks, chunks == 1 ? "" : "s");
}

// The pipeline flags among themselves (the devices and the batch are checked by the caller).
static void check_pipeline_flags(const cli_ctx *c, loom_compute_config *cc, const char *schedule,
                                 const char *balance) {
    int S = cc->pipeline_nstages;
    if (balance) {
        if (strcmp(balance, "flops") && strcmp(balance, "measured"))
            cli_usage_error(c, "--pp-balance: '%s' is not flops or measured", balance);
        cc->pipeline_measured = !strcmp(balance, "measured");
    }
    if (schedule) {
        int k = loom_schedule_from_name(schedule);
        if (k < 0 || k == LOOM_SCHEDULE_INFER_PIPE)
            cli_usage_error(c, "--schedule: '%s' is not 1f1b, gpipe or 1f1b_interleaved", schedule);
        cc->pipeline_scheduler = (loom_schedule)k;
    }
    const char *needs_pp = schedule                ? "--schedule"
                           : cc->pipeline_nchunks  ? "--virtual-stages"
                           : cc->pipeline_layers   ? "--pp-layers"
                           : cc->pipeline_pivots   ? "--pp-pivots"
                           : balance               ? "--pp-balance"
                                                   : NULL;
    if (S == 1 && needs_pp)
        cli_usage_error(c, "%s applies to pipelines: give --pp S with S > 1 too", needs_pp);
    int interleaved = cc->pipeline_scheduler == LOOM_SCHEDULE_1F1B_INTERLEAVED;
    int chunks = cc->pipeline_nchunks ? cc->pipeline_nchunks : interleaved ? 2 : 1;
    if (cc->pipeline_scheduler == LOOM_SCHEDULE_1F1B && chunks > 1)
        cli_usage_error(c, "--virtual-stages %d needs --schedule 1f1b_interleaved (or gpipe): "
                        "1f1b runs one model chunk per pipeline rank", chunks);
    if (interleaved && chunks < 2)
        cli_usage_error(c, "--virtual-stages %d with --schedule 1f1b_interleaved: interleaving "
                        "needs 2 or more model chunks per pipeline rank", chunks);
    if (interleaved && cc->pipeline_nmicros % S)
        cli_usage_error(c, "--micro-batches %d with --schedule 1f1b_interleaved must be a "
                        "multiple of --pp %d", cc->pipeline_nmicros, S);
    if (cc->pipeline_layers && cc->pipeline_pivots)
        cli_usage_error(c, "give --pp-layers (a fixed split) or --pp-pivots (balanced cuts), not "
                        "both");
    if (cc->pipeline_layers) check_pp_layers(c, cc->pipeline_layers, S, chunks);
    if (cc->pipeline_pivots) {
        const char *p = cc->pipeline_pivots;
        if (!*p || *p == ',' || p[strlen(p) - 1] == ',' || strstr(p, ",,"))
            cli_usage_error(c, "--pp-pivots: '%s' has an empty module name", p);
    }
}

// After a pipeline run: each rank of the first copy with its memory by category (ranks held by
// another MPI process are not known here).
static void print_pipeline_memory(loom_parallel_t par, const loom_compute_config *cc, FILE *f) {
    int per_stage = cc->plan_ndevices / cc->pipeline_nstages;
    fprintf(f, "memory per rank of the first model copy (MB):\n");
    for (int r = 0; r < cc->plan_ndevices; r++) {
        if (cc->comm != LOOM_COMM_LOCAL && r != loom_parallel_rank(par)) continue;
        loom_memory_stats m = loom_parallel_memory(par, r);
        fprintf(f, "  rank %d (pipeline rank %d): parameters %.2f, gradients %.2f, optimizer %.2f, "
                "activations %.2f, buffers %.2f\n", r, r / per_stage, m.parameters / 1e6,
                m.gradients / 1e6, m.optimizer / 1e6, m.activations / 1e6, m.buffers / 1e6);
    }
    if (cc->comm != LOOM_COMM_LOCAL && cc->plan_ndevices > 1)
        fprintf(f, "  (the other ranks are other processes: not shown)\n");
}

int cmd_train(int argc, char **argv) {
    cli_ctx c = {"train", train_usage};
    cli_model_opts mo = {0};
    loom_train_config tc = loom_train_config_default();
    const char *data = NULL, *save = NULL, *prompt = NULL, *optimizer = "adamw";
    int steps = 20, log_json = 0, sample = 0, profile = 0;
    static const struct option opts[] = {
        CLI_MODEL_OPTIONS,
        {"data", required_argument, 0, 0}, {"steps", required_argument, 0, 0},
        {"batch", required_argument, 0, 0}, {"seq", required_argument, 0, 0},
        {"grad-accum", required_argument, 0, 0}, {"optimizer", required_argument, 0, 0},
        {"lr", required_argument, 0, 0}, {"weight-decay", required_argument, 0, 0},
        {"beta1", required_argument, 0, 0}, {"beta2", required_argument, 0, 0},
        {"eps", required_argument, 0, 0}, {"momentum", required_argument, 0, 0},
        {"grad-clip", required_argument, 0, 0}, {"threads", required_argument, 0, 0},
        {"save", required_argument, 0, 0}, {"log-json", no_argument, 0, 0},
        {"sample", required_argument, 0, 0}, {"prompt", required_argument, 0, 0},
        {"profile", no_argument, 0, 0}, {"devices", required_argument, 0, 0},
        {"plan-devices", required_argument, 0, 0}, {"policy", required_argument, 0, 0},
        {"comm", required_argument, 0, 0}, {"zero", no_argument, 0, 0},
        {"save-sharded", required_argument, 0, 0}, {"resume", required_argument, 0, 0},
        {"constraints", required_argument, 0, 0}, {"recompute", required_argument, 0, 0},
        {"trace", required_argument, 0, 0}, {"comm-timeout", required_argument, 0, 0},
        {"zero-groups", required_argument, 0, 0}, {"zero-reduce-scatter", required_argument, 0, 0},
        {"pp", required_argument, 0, 0}, {"micro-batches", required_argument, 0, 0},
        {"schedule", required_argument, 0, 0}, {"virtual-stages", required_argument, 0, 0},
        {"pp-layers", required_argument, 0, 0}, {"pp-pivots", required_argument, 0, 0},
        {"pp-balance", required_argument, 0, 0}, {"mem", required_argument, 0, 0},
        {"device-spec", required_argument, 0, 0}, {"save-plan", required_argument, 0, 0},
        {"load-plan", required_argument, 0, 0},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    loom_compute_config cc = loom_compute_config_default();
    int plan_devices = 0, devices_given = 0;
    const char *policy = NULL, *comm = NULL, *save_sharded = NULL, *resume = NULL;
    const char *schedule = NULL, *pp_balance = NULL;
    const char *constraints_path = NULL, *trace_path = NULL;
    const char *name, *arg;
    while ((name = cli_next_option(&c, argc, argv, opts, &arg))) {
        if (!strcmp(name, "help")) {
            print_help();
            return 0;
        }
        if (cli_model_option(&c, &mo, name, arg)) continue;
        if (!strcmp(name, "data")) data = arg;
        else if (!strcmp(name, "steps")) steps = cli_int(&c, name, arg, 0, 1 << 30);
        else if (!strcmp(name, "batch")) tc.batch = cli_int(&c, name, arg, 1, 1 << 16);
        else if (!strcmp(name, "seq")) tc.seq = cli_int(&c, name, arg, 1, 1 << 20);
        else if (!strcmp(name, "grad-accum")) tc.grad_accum = cli_int(&c, name, arg, 1, 1 << 16);
        else if (!strcmp(name, "optimizer")) optimizer = arg;
        else if (!strcmp(name, "lr")) tc.lr = cli_float(&c, name, arg, 0, 1e3);
        else if (!strcmp(name, "weight-decay")) tc.weight_decay = cli_float(&c, name, arg, 0, 1e3);
        else if (!strcmp(name, "beta1")) tc.beta1 = cli_float(&c, name, arg, 0, 0.999999);
        else if (!strcmp(name, "beta2")) tc.beta2 = cli_float(&c, name, arg, 0, 0.999999);
        else if (!strcmp(name, "eps")) tc.eps = cli_float(&c, name, arg, 1e-30, 1);
        else if (!strcmp(name, "momentum")) tc.momentum = cli_float(&c, name, arg, 0, 0.999999);
        else if (!strcmp(name, "grad-clip")) tc.grad_clip = cli_float(&c, name, arg, 0, 1e9);
        else if (!strcmp(name, "threads")) tc.threads = cli_int(&c, name, arg, 1, 4096);
        else if (!strcmp(name, "save")) save = arg;
        else if (!strcmp(name, "log-json")) log_json = 1;
        else if (!strcmp(name, "sample")) sample = cli_int(&c, name, arg, 0, 1 << 20);
        else if (!strcmp(name, "prompt")) prompt = arg;
        else if (!strcmp(name, "profile")) profile = 1;
        else if (!strcmp(name, "devices")) {
            cc.runtime_ndevices = cli_int(&c, name, arg, 1, 1 << 16);
            devices_given = 1;
        }
        else if (!strcmp(name, "plan-devices")) plan_devices = cli_int(&c, name, arg, 1, 1 << 16);
        else if (!strcmp(name, "policy")) policy = arg;
        else if (!strcmp(name, "comm")) comm = arg;
        else if (!strcmp(name, "zero")) cc.use_zero = 1;
        else if (!strcmp(name, "save-sharded")) save_sharded = arg;
        else if (!strcmp(name, "resume")) resume = arg;
        else if (!strcmp(name, "constraints")) constraints_path = arg;
        else if (!strcmp(name, "recompute")) tc.recompute = arg;
        else if (!strcmp(name, "trace")) trace_path = arg, tc.trace = 1;
        else if (!strcmp(name, "comm-timeout")) cc.timeout_s = cli_float(&c, name, arg, 0.001, 1e6);
        else if (!strcmp(name, "zero-groups")) cc.zero_ngroups = cli_int(&c, name, arg, 1, 1 << 16);
        else if (!strcmp(name, "pp")) cc.pipeline_nstages = cli_int(&c, name, arg, 1, 64);
        else if (!strcmp(name, "micro-batches"))
            cc.pipeline_nmicros = cli_int(&c, name, arg, 1, 1 << 16);
        else if (!strcmp(name, "schedule")) schedule = arg;
        else if (!strcmp(name, "virtual-stages"))
            cc.pipeline_nchunks = cli_int(&c, name, arg, 1, 1 << 10);
        else if (!strcmp(name, "pp-layers")) cc.pipeline_layers = arg;
        else if (!strcmp(name, "pp-pivots")) cc.pipeline_pivots = arg;
        else if (!strcmp(name, "pp-balance")) pp_balance = arg;
        else if (!strcmp(name, "mem")) cc.mem_constraint = 1e9 * cli_float(&c, name, arg, 1e-6, 1e9);
        else if (!strcmp(name, "device-spec")) cc.device_spec = arg;
        else if (!strcmp(name, "save-plan")) cc.save_plan_path = arg;
        else if (!strcmp(name, "load-plan")) cc.load_plan_path = arg;
        else if (!strcmp(name, "zero-reduce-scatter")) {
            if (strcmp(arg, "on") && strcmp(arg, "off"))
                cli_usage_error(&c, "--zero-reduce-scatter: '%s' is not on or off", arg);
            cc.zero_reduce_scatter = !strcmp(arg, "on");
        }
    }
    if (!resume || mo.dir || mo.family) cli_model_check(&c, &mo);
    if (!data) cli_usage_error(&c, "--data FILE is required");
    if (prompt && !*prompt) cli_usage_error(&c, "--prompt must not be empty");
    if (!strcmp(optimizer, "adamw")) tc.optimizer = LOOM_OPTIM_ADAMW;
    else if (!strcmp(optimizer, "sgd")) tc.optimizer = LOOM_OPTIM_SGD;
    else cli_usage_error(&c, "--optimizer: '%s' is not adamw or sgd", optimizer);
    tc.profile = profile;
    // Pipelines: --pp S pipeline ranks per model copy, each stage on (copy's devices) / S.
    int S = cc.pipeline_nstages;
    check_pipeline_flags(&c, &cc, schedule, pp_balance);
    if (S > 1 && plan_devices % S)
        cli_usage_error(&c, "--plan-devices %d is not a multiple of --pp %d: each pipeline rank "
                        "gets plan-devices / pp devices", plan_devices, S);
    // With --pp and no --policy: one device per stage (pp), or tensor-parallel stages (hybrid)
    // when the copy has more devices than stages.
    if (!policy) policy = S == 1 ? "dp" : plan_devices > S ? "hybrid" : "pp";
    size_t plen = strlen(policy);
    int named = loom_policy_from_name(policy);
    if (plen > 5 && !strcmp(policy + plen - 5, ".json")) {
        cc.policy = LOOM_POLICY_FILE;
        cc.plan_file = policy;
    } else if (named == LOOM_POLICY_DP || named == LOOM_POLICY_TP || named == LOOM_POLICY_DATA ||
               named == LOOM_POLICY_PP || named == LOOM_POLICY_HYBRID ||
               named == LOOM_POLICY_AUTODIST) {
        cc.policy = (loom_policy)named;
    } else {
        cli_usage_error(&c, "--policy: '%s' is not dp, tp, data, pp, hybrid, autodist or a plan "
                        "file (.json)", policy);
    }
    int autodist = cc.policy == LOOM_POLICY_AUTODIST;
    if (!autodist && (cc.mem_constraint > 0 || cc.device_spec || cc.save_plan_path ||
                      cc.load_plan_path))
        cli_usage_error(&c, "--mem, --device-spec, --save-plan and --load-plan go with "
                        "--policy autodist");
    if (autodist && (S > 1 || plan_devices || cc.pipeline_nmicros > 1 || schedule))
        cli_usage_error(&c, "--policy autodist chooses the pipeline, the micro-batches and the "
                        "devices per copy itself: drop --pp, --plan-devices, --micro-batches and "
                        "--schedule (or fix them with another policy)");
    if (cc.save_plan_path && cc.load_plan_path)
        cli_usage_error(&c, "--save-plan and --load-plan exclude each other");
    if (comm && strcmp(comm, "local") && strcmp(comm, "mpi"))
        cli_usage_error(&c, "--comm: '%s' is not local or mpi", comm);
    cc.comm = (comm ? !strcmp(comm, "mpi") : loom_comm_mpi_launched()) ? LOOM_COMM_MPI
                                                                        : LOOM_COMM_LOCAL;
    // A copy's devices: --plan-devices, else the S stages for dp and pp, else all of them.
    cc.plan_ndevices = plan_devices ? plan_devices
                       : autodist ? cc.runtime_ndevices
                       : cc.policy == LOOM_POLICY_DP || cc.policy == LOOM_POLICY_PP
                           ? S
                           : cc.runtime_ndevices;
    if (cc.policy == LOOM_POLICY_PP && cc.plan_ndevices != S)
        cli_usage_error(&c, "--policy pp puts each stage on one device: --plan-devices %d must "
                        "equal --pp %d (--policy hybrid makes the stages tensor parallel)",
                        cc.plan_ndevices, S);
    if (cc.plan_ndevices % S)  // the copy spans --devices
        cli_usage_error(&c, "--devices %d is not a multiple of --pp %d: with --policy %s a model "
                        "copy spans every device and each pipeline rank gets devices / pp of them",
                        cc.runtime_ndevices, S, policy);
    if (S > 1 && !devices_given) cc.runtime_ndevices = cc.plan_ndevices;  // one copy
    if (cc.runtime_ndevices % cc.plan_ndevices) {
        if (plan_devices || S == 1)
            cli_usage_error(&c, "--devices %d is not a multiple of --plan-devices %d",
                            cc.runtime_ndevices, cc.plan_ndevices);
        cli_usage_error(&c, "--devices %d is not a multiple of the %d ranks of one model copy "
                        "(--pp %d)", cc.runtime_ndevices, cc.plan_ndevices, S);
    }
    int copies = cc.runtime_ndevices / cc.plan_ndevices;
    if (cc.pipeline_nmicros > 1 && tc.batch % (copies * cc.pipeline_nmicros))
        cli_usage_error(&c, "--batch %d does not split into %d model cop%s x --micro-batches %d",
                        tc.batch, copies, copies == 1 ? "y" : "ies", cc.pipeline_nmicros);
    // Checkpoints go through the parallel trainer (one rank is a plan too), and so do
    // micro-batches.
    int parallel = cc.runtime_ndevices > 1 || cc.comm == LOOM_COMM_MPI || save_sharded || resume ||
                   cc.pipeline_nmicros > 1 || autodist;

    loom_constraints_t constraints = NULL;
    if (constraints_path && loom_constraints_load(constraints_path, &constraints) < 0)
        return cli_fail("train", "reading the partition constraints");
    cc.constraints = constraints;
    loom_tokens_t tokens = NULL;
    if (loom_tokens_open(data, &tokens) < 0) {
        loom_constraints_free(constraints);
        return cli_fail("train", "reading the data");
    }
    loom_model_t model = NULL;
    int rc = 1;
    loom_trainer_t trainer = NULL;
    loom_parallel_t par = NULL;
    int rank = 0;
    FILE *info = stderr;
    int32_t *inputs = NULL, *targets = NULL;
    if (resume && !mo.dir && !mo.family) {
        // The checkpoint's own model: its config; the weights come with --resume below.
        if (cli_model_from_checkpoint(resume, &model) != 0) goto done;
    } else if (cli_model_load(&c, &mo, &model) != 0) {
        goto done;
    }
    const loom_model_config *mc = loom_model_get_config(model);
    if (loom_tokens_max_token(tokens) >= mc->vocab_size) {
        fprintf(stderr, "loom train: %s holds token id %d but the model's vocabulary has %d "
                "entries; use a model with a larger vocabulary (--vocab)\n", data,
                loom_tokens_max_token(tokens), mc->vocab_size);
        goto done;
    }
    if (tc.seq > mc->max_seq) {
        fprintf(stderr, "loom train: --seq %d exceeds the model's context (%d positions)\n",
                tc.seq, mc->max_seq);
        goto done;
    }
    if (parallel ? loom_parallelize(model, &cc, &tc, &par) < 0
                 : loom_trainer_create(model, &tc, &trainer) < 0) {
        rc = cli_fail("train", "preparing the training program");
        goto done;
    }
    if (par) rank = loom_parallel_rank(par);
    int64_t first_step = 0;  // a resumed run continues the data stream where it stopped
    if (resume) {
        if (loom_parallel_load_checkpoint(par, resume) < 0) {
            rc = cli_fail("train", "resuming");
            goto done;
        }
        first_step = loom_parallel_steps_done(par);
        fprintf(rank == 0 ? stderr : info, "resumed from %s at step %lld\n", resume,
                (long long)first_step);
    }
    // Under mpirun every process runs this; only rank 0 talks.
    if (rank != 0) log_json = 0;
    if (rank != 0) info = fopen("/dev/null", "w");
    if (!info) info = stderr;
    loom_memory_stats mem = par ? loom_parallel_memory(par, rank) : loom_trainer_memory(trainer);
    fprintf(info, "model: %s, %d layers, %d wide, %d heads (%d kv), vocab %d, %.2fM parameters\n",
            mc->model_type, mc->n_layer, mc->n_embd, mc->n_head, mc->n_kv_head, mc->vocab_size,
            (double)loom_model_n_params(model) / 1e6);
    fprintf(info, "data: %s, %lld tokens%s\n", data, (long long)loom_tokens_count(tokens),
            loom_tokens_is_text(tokens) ? " (bytes of text)" : "");
    if (par && loom_parallel_autodist(par)) loom_autodist_print(loom_parallel_autodist(par), info, 0);
    if (par) {
        loom_parallel_print_allocation(par, info);
    } else {
        fprintf(info, "memory: parameters %.1f MB, gradients %.1f MB, optimizer %.1f MB, "
                "activations %.1f MB (planned)\n", mem.parameters / 1e6, mem.gradients / 1e6,
                mem.optimizer / 1e6, mem.activations / 1e6);
    }
    size_t per_step = (size_t)tc.grad_accum * tc.batch * tc.seq;
    inputs = malloc(per_step * sizeof(int32_t));
    targets = malloc(per_step * sizeof(int32_t));
    if (!inputs || !targets) {
        fprintf(stderr, "loom train: out of memory\n");
        goto done;
    }
    cli_progress progress;
    cli_progress_init(&progress, steps);
    double started = cli_now();
    for (int step = 0; step < steps; step++) {
        for (int k = 0; k < tc.grad_accum; k++) {
            size_t off = (size_t)k * tc.batch * tc.seq;
            if (loom_tokens_batch(tokens, (first_step + step) * tc.grad_accum + k, tc.batch, tc.seq,
                                  inputs + off, targets + off) < 0) {
                rc = cli_fail("train", "reading a batch");
                goto done;
            }
        }
        loom_step_stats s;
        if ((par ? loom_parallel_step(par, inputs, targets, &s)
                 : loom_trainer_step(trainer, inputs, targets, &s)) < 0) {
            if (!log_json) cli_progress_done(&progress);
            rc = cli_fail("train", "training step");
            goto done;
        }
        if (log_json) {
            printf("{\"step\": %lld, \"loss\": %.6f, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
                   "\"ms\": %.2f}\n", (long long)(first_step + step + 1), (double)s.loss, (double)s.grad_norm,
                   s.tokens_per_s, s.seconds * 1e3);
            fflush(stdout);
        } else if (rank == 0) {
            cli_progress_step(&progress, step + 1, s.loss, s.tokens_per_s);
        }
    }
    if (!log_json && rank == 0) cli_progress_done(&progress);
    double elapsed = cli_now() - started;
    if (steps > 0)
        fprintf(info, "trained %d steps in %.1f s (%.0f tokens/s)\n", steps, elapsed,
                (double)steps * (double)per_step / elapsed);
    if (profile && trainer) loom_trainer_profile(trainer, stderr);
    if (par && S > 1 && !log_json) print_pipeline_memory(par, &cc, info);
    if (trace_path) {
        if ((par ? loom_parallel_write_trace(par, trace_path)
                 : loom_trainer_write_trace(trainer, trace_path)) < 0) {
            rc = cli_fail("train", "writing the trace");
            goto done;
        }
        fprintf(info, "wrote the timeline to %s (open it in Perfetto: https://ui.perfetto.dev)\n", trace_path);
    }
    if (save_sharded) {
        if (loom_parallel_save_sharded(par, save_sharded) < 0) {
            rc = cli_fail("train", "saving the sharded checkpoint");
            goto done;
        }
        fprintf(info, "saved a sharded checkpoint in %s (loom merge %s OUT joins it)\n",
                save_sharded, save_sharded);
    }
    if (par && (save || sample > 0) && loom_parallel_sync_model(par) < 0) {
        rc = cli_fail("train", "merging the parameters");
        goto done;
    }
    if (rank != 0) {  // the merged model lives on rank 0
        rc = 0;
        goto done;
    }
    if (save) {
        if (loom_model_save(model, save) < 0) {
            rc = cli_fail("train", "saving the model");
            goto done;
        }
        fprintf(stderr, "saved %s/config.json and %s/model.safetensors\n", save, save);
    }
    if (sample > 0) {
        int32_t prompt_tokens[256];
        int n_prompt;
        if (prompt) {
            n_prompt = loom_bytes_encode(prompt, strlen(prompt), prompt_tokens, 256);
            if (n_prompt > 256) n_prompt = 256;
        } else {
            int32_t first[16], unused[16];
            loom_tokens_batch(tokens, 0, 1, 16, first, unused);
            memcpy(prompt_tokens, first, sizeof first);
            n_prompt = 16;
        }
        if (n_prompt < 1) cli_usage_error(&c, "--prompt must not be empty");
        int32_t *out = malloc((size_t)sample * sizeof(int32_t));
        int n_out = 0;
        loom_sample_config sc = loom_sample_config_default();
        sc.threads = tc.threads;
        fprintf(stderr, "sample:\n");
        for (int i = 0; i < n_prompt; i++) cli_print_token(prompt_tokens[i], NULL);
        loom_status st = loom_generate(model, prompt_tokens, n_prompt, sample, &sc, cli_print_token,
                                       NULL, out, &n_out);
        printf("\n");
        free(out);
        if (st < 0) {
            rc = cli_fail("train", "sampling");
            goto done;
        }
    }
    rc = 0;
done:
    free(inputs);
    free(targets);
    if (info && info != stderr) fclose(info);
    loom_trainer_free(trainer);
    loom_parallel_free(par);
    loom_constraints_free(constraints);
    loom_model_free(model);
    loom_tokens_close(tokens);
    return rc;
}
