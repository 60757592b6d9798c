"""The flags of the pipeline commands (``run``, ``reprocess``, ``reports``, ``search``): grouped
``--help`` without importing Beam, and strict checking of a command line against every option
Beam knows at that moment (misspelled flags are errors with a suggestion, never dropped).

In: the ``DicomvecFlags`` declarations (``dicomvec.pipeline.options``) and, for checking, every
registered ``PipelineOptions`` subclass (Beam's own, dicomvec's, and any a plugin adds). Out: a
help text, or ``UsageError`` ("unknown option --sinks (did you mean --sink?)").

Nothing here lists option names: groups come from each option's name and help text
(``group_of``), and the valid options from Beam's registry at parse time, so options added later
are grouped and accepted without touching this module.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

from dicomvec.errors import UsageError

BEAM_DOCS = "https://beam.apache.org/releases/pydoc/current/apache_beam.options.pipeline_options.html"

GROUP_TITLES = {
    "input": "input and preprocessing",
    "sink": "sink: where vectors and dead letters go",
    "provider": "embedding provider (API keys come from the environment, never a flag)",
    "streaming": "streaming (with Beam's --streaming)",
    "other": "other dicomvec options",
}

BEAM_EPILOG = f"""Beam pipeline options: every option of Beam's PipelineOptions is accepted and passed to Beam,
e.g. --runner (default: DirectRunner, run here on Beam's FnApiRunner), --streaming,
--direct_num_workers N (default 1), --direct_running_mode, --setup_file ./setup.py,
--flink_master HOST:8081, --parallelism N, --environment_type, --s3_endpoint_url URL.
A misspelled option is an error, never ignored. `dicomvec {{command}} --help-beam` lists every
Beam option with its default; they are documented at
{BEAM_DOCS}

logging: -v shows Beam's own warnings, -vv its INFO log too; --log-level LEVEL sets dicomvec's.
"""

_SYNONYMS = {  # checked in this order; the first word found in the option's name decides
    "provider": ("provider", "nvclip", "openclip", "device", "model", "batch_size", "openai", "api", "embed", "cost"),
    "sink": ("sink", "dead_letter", "table", "schema", "replace", "store", "database", "db_"),
    "input": ("input", "image", "normalization", "run_id", "force", "progress", "pattern"),
}


def group_of(dest: str, help_text: Optional[str]) -> str:
    """Which ``--help`` group an option belongs to, from its name and help text."""
    if (help_text or "").lower().startswith("streaming"):
        return "streaming"
    for group, words in _SYNONYMS.items():
        if any(dest.startswith(w) or w in dest for w in words):
            return group
    return "other"


def _with_default(kwargs: Dict) -> str:
    text = kwargs.get("help") or ""
    if kwargs.get("action") in ("store_true", "store_false") or "default" in text.lower():
        return text
    default = kwargs.get("default")
    shown = "none" if default is None else default
    return f"{text} (default: {shown})".strip() if "%(default)" not in text else text


class _GroupingParser:
    """Stands in for Beam's parser while ``DicomvecFlags`` declares its flags; files each flag
    into a group of a plain argparse parser (for help only)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.groups = {name: parser.add_argument_group(title)
                       for name, title in GROUP_TITLES.items()}

    def add_argument(self, *names, **kwargs):
        dest = kwargs.get("dest") or next(
            (n.lstrip("-").replace("-", "_") for n in names if n.startswith("--")),
            names[0].lstrip("-"))
        if "%(default)" not in (kwargs.get("help") or ""):
            kwargs["help"] = _with_default(kwargs).replace("%", "%%")
        kwargs.pop("required", None)
        return self.groups[group_of(dest, kwargs.get("help"))].add_argument(*names, **kwargs)

    add_value_provider_argument = add_argument

    def __getattr__(self, name):  # add_mutually_exclusive_group, ...: the real parser's
        return getattr(self.parser, name)


def add_dicomvec_flags(parser: argparse.ArgumentParser) -> None:
    """Add dicomvec's pipeline flags, grouped, to ``parser`` (used for ``--help`` only)."""
    from dicomvec.pipeline.options import DicomvecFlags
    DicomvecFlags._add_argparse_args(_GroupingParser(parser))


class _HelpAction(argparse.Action):
    """``-h/--help``: the command's own flags, then dicomvec's pipeline flags by group."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show this help (every option with its default) and exit"):
        super().__init__(option_strings, dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        full = argparse.ArgumentParser(
            prog=parser.prog, description=parser.description, add_help=False,
            usage=f"{parser.prog} [options]",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=BEAM_EPILOG.format(command=parser.prog.split()[-1]))
        for group in parser._action_groups:
            if not group._group_actions:
                continue
            target = full.add_argument_group(
                group.title if group.title not in ("options", "optional arguments")
                else "command options")
            for action in group._group_actions:
                target._add_action(action)
        add_dicomvec_flags(full)
        full.print_help()
        parser.exit()


class _BeamHelpAction(_HelpAction):
    """``--help-beam``: every Beam pipeline option with its default (imports Beam)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="list every Beam pipeline option with its default and exit (slower: "
                      "imports Beam)"):
        super().__init__(option_strings, dest, default, help)

    def __call__(self, parser, namespace, values, option_string=None):
        beam = strict_parser(parser.prog, dicomvec_only=False, for_help=True)
        beam.usage = f"{parser.prog} [dicomvec options] [Beam options]"
        beam.description = (f"Beam's pipeline options, all accepted by {parser.prog} and passed "
                             f"to Beam\n(dicomvec's own: {parser.prog} --help), documented at\n"
                             f"{BEAM_DOCS}")
        beam.formatter_class = _DefaultsRawDescription
        beam.print_help()
        parser.exit()


def add_help_flags(parser: argparse.ArgumentParser, beam: bool = True) -> None:
    """``-h/--help`` (grouped, with defaults) and, for Beam commands, ``--help-beam``."""
    parser.add_argument("-h", "--help", action=_HelpAction)
    if beam:
        parser.add_argument("--help-beam", action=_BeamHelpAction)


def add_job_command(subparsers, name: str, summary: str, description: str, func):
    """A job command (``run``, ``reports``, ``reprocess``): its help, and the rest of the
    command line (dicomvec's and Beam's flags, checked strictly) passed to ``func``."""
    parser = subparsers.add_parser(name, help=summary, description=description, add_help=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_help_flags(parser)
    parser.set_defaults(func=func, passthrough=True)
    return parser


def run_job_command(extra: Sequence[str], name: str, run) -> int:
    """Check ``extra`` strictly, run the job (``run(extra)`` → summary), print its summary;
    the exit status is the summary's (3: the counts do not add up)."""
    check_flags(extra, f"dicomvec {name}")
    summary = run(list(extra))
    print(summary.render())
    return summary.exit_status


# --------------------------------------------------------------------------- checking


class _DefaultsRawDescription(argparse.ArgumentDefaultsHelpFormatter,
                              argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help; the description as written (the URL unbroken)."""


class _StrictMixin:
    def error(self, message):  # argparse prints usage and exits; we want one line
        raise UsageError(message)


def strict_parser(prog: str, dicomvec_only: bool = False, for_help: bool = False):
    """A parser holding every option of every registered ``PipelineOptions`` subclass (Beam's
    and dicomvec's) — or dicomvec's only — whose errors raise ``UsageError``."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    from dicomvec.pipeline.options import DicomvecOptions

    class StrictParser(_StrictMixin, _BeamArgumentParser):
        pass

    parser = StrictParser(prog=prog, allow_abbrev=False, add_help=False,
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    classes: Dict[str, type] = {}
    for cls in ([DicomvecOptions] if dicomvec_only else PipelineOptions.__subclasses__()):
        classes.setdefault(str(cls), cls)  # one class per name, as Beam's own parser does
    for cls in classes.values():
        if for_help and cls is DicomvecOptions:
            continue
        cls._add_argparse_args(parser)
    return parser


def dicomvec_parser(prog: str) -> argparse.ArgumentParser:
    """dicomvec's own flags (``DicomvecFlags``) on a plain argparse parser whose errors raise
    ``UsageError``; imports no Beam."""
    from dicomvec.pipeline.options import DicomvecFlags

    class PlainStrictParser(_StrictMixin, argparse.ArgumentParser):
        pass

    parser = PlainStrictParser(prog=prog, allow_abbrev=False, add_help=False)
    DicomvecFlags._add_argparse_args(parser)
    return parser


def _option_strings(parser: argparse.ArgumentParser) -> List[str]:
    return sorted({s for action in parser._actions for s in action.option_strings
                   if s.startswith("--")})


def suggestion(flag: str, known: Sequence[str]) -> Optional[str]:
    """The known option closest to ``flag`` (``--sinks`` → ``--sink``), or None."""
    import difflib
    by_normal = {k.replace("-", "_"): k for k in known}
    normal = flag.replace("-", "_")
    if normal in by_normal:
        return by_normal[normal]
    close = difflib.get_close_matches(normal, list(by_normal), n=1, cutoff=0.75)
    return by_normal[close[0]] if close else None


def check_flags(argv: Sequence[str], prog: str, dicomvec_only: bool = False,
                own_flags: Sequence[str] = ()) -> None:
    """Raise ``UsageError`` for the first unknown option, stray argument or bad value in
    ``argv``; valid Beam options pass (unless ``dicomvec_only``). ``own_flags``: the command's
    own options (already parsed out of ``argv``), offered too when suggesting a spelling."""
    parser = strict_parser(prog, dicomvec_only=dicomvec_only)
    _, unknown = parser.parse_known_args(list(argv))
    for token in unknown:
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            near = suggestion(flag, [*own_flags, *_option_strings(parser)])
            hint = f" (did you mean {near}?)" if near else ""
            where = "" if dicomvec_only else "; see --help and --help-beam"
            raise UsageError(f"unknown option {flag}{hint}{where}")
        raise UsageError(f"unexpected argument {token!r} (options take the form --name value)")
