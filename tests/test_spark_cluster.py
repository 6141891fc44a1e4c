"""scripts/preprocess_spark_submit.sh on a real Spark standalone cluster: a master and two
workers (one core, 1.5 GB each) started from the venv's pyspark on free 127.0.0.1 ports; the
output must equal the local-mode output of the same input and arguments (same rows in the same
order, same ids, same table sizes), and both workers must have run an executor. One worker's
process group (the worker and its executor) is killed with -9 when the train write starts: Spark
reruns its tasks on the other, and the output still equals the local run's. The cluster's
process groups are killed in the fixture's teardown, whatever the test did."""
import glob
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO, SPARK, SYNTH_TOOL, requires_java, run_tool
from dlrm.launch import free_port
from dlrm.schema import COLUMNS, SPLITS
from test_preprocess import read_split, tool

TOOL_ARGS = ["--mod_idx", "1000", "--num_test_examples", "400", "--train_files", "3",
             "--eval_files", "2", "--seed", "9", "--shuffle_partitions", "4"]


def spark_home():
    import pyspark

    return os.path.dirname(pyspark.__file__)


def master_json(webui_port):
    with urllib.request.urlopen("http://127.0.0.1:%d/json/" % webui_port, timeout=5) as r:
        return json.loads(r.read().decode())


def wait_for(what, check, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("the Spark cluster did not come up: %s" % what)


class Cluster:
    def __init__(self, root):
        self.root = root
        self.procs = []
        self.env = dict(os.environ, SPARK_HOME=spark_home(), SPARK_LOCAL_IP="127.0.0.1",
                        SPARK_DAEMON_MEMORY="256m", SPARK_LOG_DIR=os.path.join(root, "logs"),
                        SPARK_NO_DAEMONIZE="1")
        self.port, self.webui = free_port(), free_port()
        self.url = "spark://127.0.0.1:%d" % self.port
        self.work_dirs = []

    def start(self, name, *args):
        log = open(os.path.join(self.root, name + ".log"), "w")
        cmd = [os.path.join(spark_home(), "bin", "spark-class"), *args]
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))
        log.close()

    def up(self):
        self.start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                   "--port", str(self.port), "--webui-port", str(self.webui))
        wait_for("master", lambda: master_json(self.webui)["status"] == "ALIVE")
        for k in range(2):
            work = os.path.join(self.root, "worker%d" % k)
            os.makedirs(work)
            self.work_dirs.append(work)
            self.start("worker%d" % k, "org.apache.spark.deploy.worker.Worker", "--host",
                       "127.0.0.1", "--port", str(free_port()), "--webui-port", str(free_port()),
                       "--cores", "1", "--memory", "1536m", "--work-dir", work, self.url)
        wait_for("2 workers", lambda: sum(w["state"] == "ALIVE"
                                          for w in master_json(self.webui)["workers"]) == 2)

    def kill_worker(self, k):
        """kill -9 worker k's process group: the worker and the executor it launched."""
        os.killpg(self.procs[1 + k].pid, signal.SIGKILL)
        self.procs[1 + k].wait()

    def down(self):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def logs(self):
        out = []
        for f in sorted(glob.glob(os.path.join(self.root, "*.log"))):
            with open(f) as fh:
                out.append("== %s\n%s" % (f, fh.read()[-2000:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("spark_cluster")))
    try:
        c.up()
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def cluster_input(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster_in")
    run_tool(SYNTH_TOOL, "--output_dir", d, "--days", "3", "--rows_per_day", "1500", "--seed", "4",
             timeout=300)
    return str(d)


@pytest.mark.slow
@requires_java
def test_spark_submit_on_a_standalone_cluster_equals_local_mode(cluster, cluster_input,
                                                                tmp_path):
    t = time.time()
    env = dict(cluster.env, SPARK_MASTER=cluster.url, PY=sys.executable, EXECUTOR_MEMORY="1g",
               EXECUTOR_CORES="1", DRIVER_MEMORY_GB="1",
               SPARK_SUBMIT_ARGS="--conf spark.driver.host=127.0.0.1")
    err_path = str(tmp_path / "submit.stderr")  # a file: Spark's log lines would fill a pipe
    with open(err_path, "w") as err:
        p = subprocess.Popen(["bash", os.path.join(REPO, "scripts", "preprocess_spark_submit.sh"),
                              cluster_input, str(tmp_path / "cluster"), *TOOL_ARGS,
                              "--progress_interval", "2"], stdout=subprocess.PIPE, stderr=err,
                             text=True, env=env)
    stdout = []
    for line in p.stdout:  # kill worker 1 as the train write starts
        stdout.append(line)
        if "writing train" in line:
            cluster.kill_worker(1)
    with open(err_path) as f:
        r = subprocess.CompletedProcess(p.args, p.wait(timeout=900), "".join(stdout), f.read())
    took = time.time() - t
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + cluster.logs()
    assert "spark-submit: using its spark.master %s" % cluster.url in r.stdout
    assert "writing train" in r.stdout and "Lost executor" in r.stderr, r.stderr[-3000:]
    print("cluster run: %.1f s" % took)
    # both workers ran an executor of the application: <work-dir>/app-*/<executor id>/
    for work in cluster.work_dirs:
        assert glob.glob(os.path.join(work, "app-*", "*", "stderr")), (work, cluster.logs())
    apps = master_json(cluster.webui)["completedapps"]
    assert [a["name"] for a in apps] == ["criteo1t_parquet"]

    local = tool(["--input_dir", cluster_input, "--output_dir", str(tmp_path / "local"),
                  "--export_dataset_info", *TOOL_ARGS, *SPARK[:4]])
    assert local.returncode == 0, local.stdout + local.stderr
    infos = []
    for name in ("cluster", "local"):
        with open(str(tmp_path / name / "dataset_info.json")) as f:
            infos.append(json.load(f))
    assert infos[0] == infos[1]  # rows, malformed counts, table sizes, arguments
    for split in SPLITS:
        a, _ = read_split(str(tmp_path / "cluster"), split)
        b, _ = read_split(str(tmp_path / "local"), split)
        assert a.num_rows == b.num_rows > 0
        for c in COLUMNS:
            assert a.column(c).equals(b.column(c)), (split, c)
