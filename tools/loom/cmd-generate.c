// loom generate: sample from a model with a key/value cache; loom graph: print graph + program.

#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *generate_usage =
    "loom generate (--model-dir DIR | --model gpt2|llama [sizes]) --prompt TEXT [--tokens N] "
    "[--temperature X] [--top-k K] [--seed N]";

int cmd_generate(int argc, char **argv) {
    cli_ctx c = {"generate", generate_usage};
    cli_model_opts mo = {0};
    loom_sample_config sc = loom_sample_config_default();
    const char *prompt = NULL;
    int n_new = 64;
    static const struct option opts[] = {
        CLI_MODEL_OPTIONS,
        {"prompt", required_argument, 0, 0}, {"tokens", required_argument, 0, 0},
        {"temperature", required_argument, 0, 0}, {"top-k", required_argument, 0, 0},
        {"sample-seed", required_argument, 0, 0}, {"threads", required_argument, 0, 0},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *name, *arg;
    while ((name = cli_next_option(&c, argc, argv, opts, &arg))) {
        if (!strcmp(name, "help")) {
            printf("usage: %s\n\n%s", generate_usage, CLI_MODEL_HELP);
            printf("sampling:\n"
                   "  --prompt TEXT          text to continue (byte tokens)\n"
                   "  --tokens N             new tokens (default 64; capped by the context)\n"
                   "  --temperature X        0 = greedy (default 1.0)\n"
                   "  --top-k K              sample among the K likeliest, 0 = all (default 40)\n"
                   "  --sample-seed N        sampling seed (default 1337)\n"
                   "  --threads N            CPU threads (default: all cores)\n");
            return 0;
        }
        if (cli_model_option(&c, &mo, name, arg)) continue;
        if (!strcmp(name, "prompt")) prompt = arg;
        else if (!strcmp(name, "tokens")) n_new = cli_int(&c, name, arg, 0, 1 << 20);
        else if (!strcmp(name, "temperature")) sc.temperature = cli_float(&c, name, arg, 0, 100);
        else if (!strcmp(name, "top-k")) sc.top_k = cli_int(&c, name, arg, 0, 1 << 24);
        else if (!strcmp(name, "sample-seed")) sc.seed = cli_u64(&c, name, arg);
        else if (!strcmp(name, "threads")) sc.threads = cli_int(&c, name, arg, 1, 4096);
    }
    if (!prompt || !*prompt) cli_usage_error(&c, "--prompt TEXT is required");
    loom_model_t model;
    if (cli_model_load(&c, &mo, &model) != 0) return 1;
    size_t len = strlen(prompt);
    int32_t *tokens = malloc((len + 1) * sizeof(int32_t));
    int32_t *out = malloc(((size_t)n_new + 1) * sizeof(int32_t));
    int n_prompt = loom_bytes_encode(prompt, len, tokens, len + 1), n_out = 0, rc = 0;
    for (int i = 0; i < n_prompt; i++) cli_print_token(tokens[i], NULL);
    if (loom_generate(model, tokens, n_prompt, n_new, &sc, cli_print_token, NULL, out, &n_out) < 0)
        rc = cli_fail("generate", "sampling");
    printf("\n");
    free(tokens);
    free(out);
    loom_model_free(model);
    return rc;
}

int cli_print_token(int32_t token, void *user) {
    char buf[32];
    size_t n = loom_bytes_decode(token, buf, sizeof buf);
    fwrite(buf, 1, n, stdout);
    fflush(stdout);
    (void)user;
    return 0;
}

static const char *graph_usage =
    "loom graph (--model-dir DIR | --model gpt2|llama [sizes]) [--batch B] [--seq T]";

int cmd_graph(int argc, char **argv) {
    cli_ctx c = {"graph", graph_usage};
    cli_model_opts mo = {0};
    loom_train_config tc = loom_train_config_default();
    static const struct option opts[] = {
        CLI_MODEL_OPTIONS, {"batch", required_argument, 0, 0}, {"seq", required_argument, 0, 0},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *name, *arg;
    while ((name = cli_next_option(&c, argc, argv, opts, &arg))) {
        if (!strcmp(name, "help")) {
            printf("usage: %s\n\nPrints the training graph (ops, module paths, shapes,\n"
                   "annotations) and the per-rank program with its memory plan.\n\n%s",
                   graph_usage, CLI_MODEL_HELP);
            return 0;
        }
        if (cli_model_option(&c, &mo, name, arg)) continue;
        if (!strcmp(name, "batch")) tc.batch = cli_int(&c, name, arg, 1, 1 << 16);
        else if (!strcmp(name, "seq")) tc.seq = cli_int(&c, name, arg, 1, 1 << 20);
    }
    loom_model_t model;
    if (cli_model_load(&c, &mo, &model) != 0) return 1;
    loom_trainer_t t;
    int rc = 0;
    if (loom_trainer_create(model, &tc, &t) < 0) {
        rc = cli_fail("graph", "lowering");
    } else {
        if (loom_trainer_dump(t, stdout) < 0) rc = cli_fail("graph", "printing");
        loom_trainer_free(t);
    }
    loom_model_free(model);
    return rc;
}
