// loom merge: join a sharded checkpoint into one Hugging Face directory (config.json,
// model.safetensors) with the optimizer state beside it (optimizer.safetensors).

#include "cli.h"

#include "models/family.h"

#include <stdio.h>
#include <string.h>

static const char *merge_usage = "loom merge SHARD_DIR OUT_DIR";

static loom_family merge_family = LOOM_FAMILY_GPT2;

static const char *file_name(const char *name, char *buf, size_t cap) {
    return loom__family(merge_family)->param_to_file(name, buf, cap);
}

int cmd_merge(int argc, char **argv) {
    cli_ctx c = {"merge", merge_usage};
    static const struct option opts[] = {{"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *name, *arg;
    while ((name = cli_next_option_positional(&c, argc, argv, opts, &arg))) {
        if (!strcmp(name, "help")) {
            printf("usage: %s\n\nJoins the shards written by 'loom train --save-sharded' (any plan)\n"
                   "into OUT_DIR: config.json and model.safetensors (Hugging Face names),\n"
                   "optimizer.safetensors (AdamW moments and step). Checksums are verified.\n",
                   merge_usage);
            return 0;
        }
    }
    if (argc - optind != 2) cli_usage_error(&c, "give the shard directory and the output directory");
    const char *shards = argv[optind], *out = argv[optind + 1];
    loom_checkpoint_t ck;
    if (loom_checkpoint_open(shards, &ck) < 0) return cli_fail("merge", "opening the checkpoint");
    loom_model_config cfg;
    const char *json = loom_checkpoint_config_json(ck);
    int rc = 0;
    if (json && loom_model_config_parse(json, shards, &cfg) == 0) merge_family = cfg.family;
    else merge_family = LOOM_FAMILY_COUNT;
    loom_checkpoint_close(ck);
    if (loom_checkpoint_merge(shards, out, merge_family < LOOM_FAMILY_COUNT ? file_name : NULL) < 0)
        rc = cli_fail("merge", "merging");
    else
        fprintf(stderr, "merged %s into %s\n", shards, out);
    return rc;
}
