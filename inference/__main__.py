"""`python -m inference SUBCOMMAND`: convert, make-tiny, plan, generate, bench, logits."""

import argparse
import importlib

# subcommand -> (module, function taking the parsed args, one-line help)
SUBCOMMANDS = {
    "convert": ("inference.checkpoint", "convert_cli", "released ckpt-0/ folder -> safetensors shards"),
    "make-tiny": ("inference.tiny", "make_tiny_cli", "build the small seeded demo checkpoint"),
    "plan": ("inference.placement", "plan_cli", "print placement, bytes per device and tokens/s estimate"),
    "generate": ("inference.engine", "generate_cli", "stream a reply to --prompt"),
    "bench": ("inference.engine", "bench_cli", "measure prefill and decode tokens/s"),
    "logits": ("inference.checkpoint", "logits_cli", "write float32 logits for a tokens .npz"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, function_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        module = importlib.import_module(module_name)
        getattr(module, function_name.replace("_cli", "_arguments"))(sub)
        sub.set_defaults(run=getattr(module, function_name))
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
