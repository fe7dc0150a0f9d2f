// loom: the command-line tool. Dispatches to the subcommands.

#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char *usage =
    "usage: loom <command> [options]\n"
    "\n"
    "commands:\n"
    "  train      train a model on a token file or a text file\n"
    "  generate   sample text from a model with a key/value cache\n"
    "  graph      print a model's graph and its per-rank program\n"
    "  merge      join a sharded checkpoint into one Hugging Face directory\n"
    "  plan       find the fastest parallel plan for a model on N devices (autodist)\n"
    "  bench      measure this machine (bench devices: the \"cpu\" device spec)\n"
    "\n"
    "Run 'loom <command> --help' for a command's options.\n";

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(usage, stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("loom %s\n", LOOM_VERSION_STRING);
        return 0;
    }
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "graph")) return cmd_graph(argc - 1, argv + 1);
    if (!strcmp(cmd, "merge")) return cmd_merge(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "plan")) return cmd_plan(argc - 1, argv + 1);
    fprintf(stderr, "loom: unknown command '%s'\n%s", cmd, usage);
    return CLI_EXIT_USAGE;
}
