// loom plan: the fastest parallel plan for a model on N devices of a kind under a memory limit,
// for this machine or for a cluster one does not have (autodist, docs/autodist.md).

#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char *plan_usage =
    "loom plan --model-config config.json --devices N [--device-spec NAME|FILE] [--mem GB]\n"
    "          [--global-batch B] [--seq T] [--tp K] [--pp K] [--dp K] [--micro-batch b]\n"
    "          [--recompute none|selective|full] [--zero on|off] [--schedule S]\n"
    "          [--constraints FILE] [--op-search on|off] [--json] [--explain]\n"
    "          [--format megatron]\n"
    "          [--save-plan FILE | --load-plan FILE]";

static void print_help(void) {
    printf("usage: %s\n\n"
           "Searches tensor x pipeline x data-parallel degrees, each op's strategy inside a\n"
           "tensor-parallel group, micro-batch size, pipeline schedule, recomputation and\n"
           "ZeRO-1 for the fastest plan that fits the memory limit, and prints it: a table per\n"
           "stage, the strategies, the predicted step time, tokens/s, MFU.\n\n"
           "  --model-config FILE      Hugging Face config.json (gpt2, llama, mistral, qwen2)\n"
           "  --devices N              devices of the job\n"
           "  --device-spec NAME|FILE  a100-80gb-sxm, h100-80gb-sxm, cpu (this machine,\n"
           "                           measured), or a JSON spec (docs/devices.md); default cpu\n"
           "  --mem GB                 memory one device may use (default 0.8 x the device's)\n"
           "  --global-batch B         sequences per optimizer step (default 8)\n"
           "  --seq T                  tokens per sequence (default 1024)\n"
           "  --tp/--pp/--dp K         fix a degree (the rest is searched)\n"
           "  --micro-batch b          fix the sequences per micro-batch\n"
           "  --recompute MODE         fix recomputation: none, selective (attention), full\n"
           "  --zero on|off            fix ZeRO-1 (optimizer state sharded over dp)\n"
           "  --schedule S             fix the pipeline schedule: 1f1b, gpipe, 1f1b_interleaved\n"
           "  --precision P            fp32 or mixed (bf16 + fp32 Adam); default by the device\n"
           "  --max-partition-degree K largest tensor-parallel degree (default: a node)\n"
           "  --pipeline-pivots LIST   modules where a stage may start (\"h.4,h.8\")\n"
           "  --recompute-modules SPEC recompute exactly these modules (\"attn\", \"h.0,h.1\")\n"
           "  --constraints FILE       partition constraints (YAML, docs/parallel.md)\n"
           "  --op-search on|off       per-op strategies inside tensor-parallel groups: search\n"
           "                           them (on, the default) or keep the family's Megatron\n"
           "                           table (off)\n"
           "  --roofline               op times from the spec's roofline even on the cpu spec\n"
           "  --keep N                 alternatives kept for --explain and --json (default 10)\n"
           "  --json                   print the plan as JSON\n"
           "  --explain                also list the best rejected alternatives and why\n"
           "  --format megatron        print the equivalent Megatron-LM arguments\n"
           "  --save-plan FILE         also write the plan to FILE (JSON: settings, job, model,\n"
           "                           every op's split and stage; docs/autodist.md)\n"
           "  --load-plan FILE         no search: read the plan from FILE, check it against the\n"
           "                           model (and --devices, --global-batch, --seq) and\n"
           "                           estimate it for --device-spec and --mem\n",
           plan_usage);
}

// Settings the search chooses (a loaded plan file fixes them all).
static int is_search_setting(const char *flag) {
    static const char *const names[] = {"tp", "pp", "dp", "micro-batch", "recompute", "zero",
                                        "schedule", "precision", "max-partition-degree",
                                        "pipeline-pivots", "recompute-modules", "op-search"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(flag, names[i])) return 1;
    return 0;
}

static int on_off(const cli_ctx *c, const char *flag, const char *arg) {
    if (!strcmp(arg, "on")) return 1;
    if (!strcmp(arg, "off")) return 0;
    cli_usage_error(c, "--%s: expected on or off, got '%s'", flag, arg);
}

int cmd_plan(int argc, char **argv) {
    cli_ctx c = {"plan", plan_usage};
    static const struct option opts[] = {
        {"model-config", required_argument, 0, 0}, {"devices", required_argument, 0, 0},
        {"device-spec", required_argument, 0, 0}, {"mem", required_argument, 0, 0},
        {"global-batch", required_argument, 0, 0}, {"seq", required_argument, 0, 0},
        {"tp", required_argument, 0, 0}, {"pp", required_argument, 0, 0},
        {"dp", required_argument, 0, 0}, {"micro-batch", required_argument, 0, 0},
        {"recompute", required_argument, 0, 0}, {"zero", required_argument, 0, 0},
        {"schedule", required_argument, 0, 0}, {"precision", required_argument, 0, 0},
        {"max-partition-degree", required_argument, 0, 0},
        {"pipeline-pivots", required_argument, 0, 0},
        {"recompute-modules", required_argument, 0, 0},
        {"constraints", required_argument, 0, 0}, {"roofline", no_argument, 0, 0},
        {"op-search", required_argument, 0, 0},
        {"keep", required_argument, 0, 0}, {"json", no_argument, 0, 0},
        {"explain", no_argument, 0, 0}, {"format", required_argument, 0, 0},
        {"save-plan", required_argument, 0, 0}, {"load-plan", required_argument, 0, 0},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    loom_autodist_config ac = loom_autodist_config_default();
    const char *config = NULL, *constraints = NULL, *format = NULL, *name, *arg;
    const char *save_plan = NULL, *load_plan = NULL, *searched = NULL;
    int json = 0, explain = 0, have_devices = 0;
    while ((name = cli_next_option(&c, argc, argv, opts, &arg))) {
        if (!strcmp(name, "help")) {
            print_help();
            return 0;
        }
        if (is_search_setting(name)) searched = name;
        if (!strcmp(name, "model-config")) config = arg;
        else if (!strcmp(name, "devices")) ac.devices = cli_int(&c, name, arg, 1, 1 << 20), have_devices = 1;
        else if (!strcmp(name, "device-spec")) ac.device_spec = arg;
        else if (!strcmp(name, "mem")) ac.mem_constraint = 1e9 * cli_float(&c, name, arg, 1e-6, 1e9);
        else if (!strcmp(name, "global-batch")) ac.global_batch = cli_int(&c, name, arg, 1, 1 << 24);
        else if (!strcmp(name, "seq")) ac.seq = cli_int(&c, name, arg, 1, 1 << 24);
        else if (!strcmp(name, "tp")) ac.tp = cli_int(&c, name, arg, 1, 1 << 20);
        else if (!strcmp(name, "pp")) ac.pp = cli_int(&c, name, arg, 1, 1 << 20);
        else if (!strcmp(name, "dp")) ac.dp = cli_int(&c, name, arg, 1, 1 << 20);
        else if (!strcmp(name, "micro-batch")) ac.micro_batch = cli_int(&c, name, arg, 1, 1 << 24);
        else if (!strcmp(name, "zero")) ac.zero = on_off(&c, name, arg);
        else if (!strcmp(name, "max-partition-degree"))
            ac.max_partition_degree = cli_int(&c, name, arg, 1, 1 << 20);
        else if (!strcmp(name, "pipeline-pivots")) ac.pipeline_pivots = arg;
        else if (!strcmp(name, "recompute-modules")) ac.recompute_modules = arg;
        else if (!strcmp(name, "constraints")) constraints = arg;
        else if (!strcmp(name, "roofline")) ac.measured = 0;
        else if (!strcmp(name, "op-search")) ac.op_search = on_off(&c, name, arg);
        else if (!strcmp(name, "keep")) ac.keep = cli_int(&c, name, arg, 1, 1000);
        else if (!strcmp(name, "json")) json = 1;
        else if (!strcmp(name, "explain")) explain = 1;
        else if (!strcmp(name, "format")) format = arg;
        else if (!strcmp(name, "save-plan")) save_plan = arg;
        else if (!strcmp(name, "load-plan")) load_plan = arg;
        else if (!strcmp(name, "recompute")) {
            ac.recompute = loom_recompute_mode_from_name(arg);
            if (ac.recompute < 0)
                cli_usage_error(&c, "--recompute: expected none, selective or full, got '%s'", arg);
        } else if (!strcmp(name, "schedule")) {
            ac.schedule = loom_schedule_from_name(arg);
            if (ac.schedule < 0 || ac.schedule == LOOM_SCHEDULE_INFER_PIPE)
                cli_usage_error(&c, "--schedule: expected 1f1b, gpipe or 1f1b_interleaved, got "
                                "'%s'", arg);
        } else if (!strcmp(name, "precision")) {
            if (!strcmp(arg, "fp32")) ac.precision = LOOM_PRECISION_FP32;
            else if (!strcmp(arg, "mixed")) ac.precision = LOOM_PRECISION_MIXED;
            else cli_usage_error(&c, "--precision: expected fp32 or mixed, got '%s'", arg);
        }
    }
    if (!config) cli_usage_error(&c, "--model-config is required");
    if (!have_devices) cli_usage_error(&c, "--devices is required");
    if (format && strcmp(format, "megatron") != 0)
        cli_usage_error(&c, "--format: the one format is 'megatron', got '%s'", format);
    if (format && json) cli_usage_error(&c, "--format megatron and --json exclude each other");
    if (save_plan && load_plan)
        cli_usage_error(&c, "--save-plan and --load-plan exclude each other (a loaded plan is "
                        "already in its file)");
    if (load_plan && searched)
        cli_usage_error(&c, "--%s: the plan file fixes the settings; drop --%s, or drop "
                        "--load-plan to search", searched, searched);

    loom_model_config mc;
    if (loom_model_config_load(config, &mc) < 0) return cli_fail("plan", "reading the model config");
    loom_constraints_t cons = NULL;
    if (constraints && loom_constraints_load(constraints, &cons) < 0)
        return cli_fail("plan", "reading the partition constraints");
    ac.constraints = cons;
    loom_autodist_t ad = NULL;
    loom_status st = load_plan ? loom_autodist_load(load_plan, &mc, &ac, &ad)
                               : loom_autodist_search(&mc, &ac, &ad);
    int rc = 0;
    if (st < 0) {
        // Nothing fits: still show the smallest plan (to stderr) before the error.
        if (ad && !json && !format) loom_autodist_print(ad, stderr, explain);
        rc = cli_fail("plan", load_plan ? "loading the plan" : "searching");
    } else if (save_plan && loom_autodist_save(ad, save_plan) < 0) {
        rc = cli_fail("plan", "saving the plan");
    } else if (json) {
        rc = loom_autodist_write_json(ad, stdout) < 0 ? cli_fail("plan", "writing JSON") : 0;
    } else if (format) {
        loom_autodist_print_megatron(ad, stdout);
    } else {
        loom_autodist_print(ad, stdout, explain);
    }
    if (rc == 0 && save_plan)
        fprintf(stderr, "wrote the plan to %s (loom plan --load-plan %s reads it back)\n",
                save_plan, save_plan);
    loom_autodist_free(ad);
    loom_constraints_free(cons);
    return rc;
}
