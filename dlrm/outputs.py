"""Which existing output directory a tool may replace (``--overwrite``): only one it wrote itself.

A tool describes what it writes as a layout: ``{top-level name: pattern}``, where the pattern is
None for a file, or a regular expression that the path (relative to that folder, ``/``-separated)
of every file below that folder matches. A directory is the tool's when it holds its marker file
and nothing else than the layout names, so a mistyped ``--output_dir ~`` (or any directory
holding one file the tool never writes) is refused rather than deleted.
"""
import os
import re


def foreign_entries(path, layout, marker):
    """The entries of directory ``path`` (relative paths, sorted) that the layout does not name;
    ``[marker + " (missing)"]`` when the marker file is absent. Empty: path is the tool's output.

    path must be an existing directory; symbolic links count as foreign (replacing the output
    would follow none of them)."""
    found = []
    names = sorted(os.listdir(path))
    if marker not in names or not os.path.isfile(os.path.join(path, marker)):
        found.append(marker + " (missing)")
    for name in names:
        full = os.path.join(path, name)
        if name not in layout or os.path.islink(full):
            found.append(name)
        elif layout[name] is None:
            if not os.path.isfile(full):
                found.append(name)
        elif not os.path.isdir(full):
            found.append(name)
        else:
            found += [name + "/" + rel for rel in _files_below(full)
                      if not re.fullmatch(layout[name], rel) or os.path.islink(os.path.join(full, rel))]
    return found


def _files_below(top):
    """Relative paths of everything below top that is not a plain directory (files, links...)."""
    for root, dirs, files in os.walk(top):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if d not in links]
        for name in sorted(files + links):
            yield os.path.relpath(os.path.join(root, name), top).replace(os.sep, "/")


def replace_refusal(path, layout, marker, tool, flag="--output_dir"):
    """None if the existing non-empty directory ``path`` is ``tool``'s output (may be replaced);
    else the one-line reason to refuse, naming up to three foreign entries."""
    foreign = foreign_entries(path, layout, marker)
    if not foreign:
        return None
    shown = ", ".join(foreign[:3]) + (", ... (%d in all)" % len(foreign) if len(foreign) > 3 else "")
    return ("%s %s is not an output of %s (it holds %s), so --overwrite will not replace it; remove it "
            "yourself or choose another %s" % (flag, path, tool, shown, flag))
