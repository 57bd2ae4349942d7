"""`python -m fusedopt.bench` (console script `fusedopt-bench`)."""
import sys
from typing import Optional, Sequence

from .cli import build_config, parse_arguments, settings_of
from .plot import plot_bandwidth
from .report import format_report, to_json_document, write_json
from .session import measure


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_arguments(argv)
    config = build_config(options)
    if options.cuda_chunk_bytes:
        import fusedopt.backends

        fusedopt.backends.get("cuda").chunk_bytes = options.cuda_chunk_bytes
    result, environment = measure(config, "python -m fusedopt.bench", argv, options.threads)
    print(format_report(result, config, environment))
    if options.json:
        write_json(options.json, to_json_document(result, config, environment, settings_of(options, config)))
        print(f"\nwrote {options.json}")
    if options.plot:
        title = f"{environment['device_name']}: optimizer step bandwidth"
        plot_bandwidth(result, options.plot, title)
        print(f"wrote {options.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
