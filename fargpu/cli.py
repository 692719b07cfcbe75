"""The `fargpu` command: one root for every part of the project.

fargpu run -- CMD ...     lease a GPU and run CMD on it through the stub (fargpu/run.py)
fargpu pool ...           operate the pool: status, nodes, leases, sessions, drain, undrain, evict, page-out/in,
                          tenants, keys, whoami
fargpu pool-manager       run a pool manager (REST + gRPC)
fargpu server ...         the node server (server/cli.py), when that part is installed
fargpu demo               the main job: a one-machine pool and a CUDA demo through `fargpu run`
fargpu doctor             check a client, node or pool manager set-up and say what to fix (fargpu/doctor.py)"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from fargpu.pool_manager import tenants_cli as _tenants_cli  # noqa: F401 - adds `fargpu pool tenants|keys|whoami`
from fargpu.pool_manager.admin_cli import app as pool_app
from fargpu.pool_manager.serve_cli import pool_manager
from fargpu.pool_manager.units import parse_size

app = typer.Typer(help="fargpu: run unmodified CUDA programs on a remote GPU pool.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")
app.command("pool-manager")(pool_manager)

try:
    from fargpu.server.cli import app as server_app
except ImportError as _server_import_error:  # the node server's CLI is built separately; say so when asked
    _missing = str(_server_import_error)
    server_app = typer.Typer(help="The node server (not available in this installation).")

    @server_app.callback(invoke_without_command=True)
    def _server_missing() -> None:
        typer.echo(f"error: the node server CLI is not available: {_missing}", err=True)
        raise typer.Exit(1)


app.add_typer(server_app, name="server")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@app.command(
    "run",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def run(
    cmd: Annotated[list[str], typer.Argument(help="the command and its arguments (after --)", show_default=False)],
    vram: Annotated[str, typer.Option(envvar="FARGPU_VRAM", help="VRAM per GPU, e.g. 8G")] = "1G",
    gpus: Annotated[int, typer.Option(min=1, help="GPUs")] = 1,
    pool: Annotated[
        str | None, typer.Option(envvar="FARGPU_POOL_URL", help="pool manager URL [default: http://127.0.0.1:7000]")
    ] = None,
    qos: Annotated[str | None, typer.Option(help="guaranteed | standard | best_effort")] = None,
    ttl: Annotated[float, typer.Option(min=1, help="lease TTL in seconds (renewed while CMD runs)")] = 60.0,
    wait: Annotated[float, typer.Option(min=0, help="wait up to this many seconds for capacity")] = 0.0,
    label: Annotated[str | None, typer.Option(help="label shown to operators [default: the command]")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no lease banner")] = False,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="seconds CMD may sit idle before its node pages its GPU memory out (0: never) [default: the pool's]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Lease GPU capacity, run CMD with the fargpu stub loaded, release the lease. Exits with CMD's code."""
    from fargpu.run import run_leased

    rc = asyncio.run(
        run_leased(
            cmd,
            pool_url=pool,
            vram_bytes=_size(vram),
            gpus=gpus,
            qos=qos,
            ttl_s=ttl,
            wait_s=wait,
            label=label,
            quiet=quiet,
            idle_timeout_s=idle_timeout,
        )
    )
    raise typer.Exit(rc)


@app.command("demo")
def demo(
    backend: Annotated[str, typer.Option(help="auto (GPU if present, else simulated), cuda, sim")] = "auto",
) -> None:
    """The main job: a one-machine pool (pool manager + local node server) and a CUDA demo through `fargpu run`."""
    from fargpu.demo import main as demo_main

    raise typer.Exit(demo_main(backend))


@app.command("doctor")
def doctor(
    role: Annotated[str, typer.Option(help="what to check: client (this machine runs CUDA programs), node (it runs "
                                      "`fargpu server`) or pool-manager")] = "client",
    pool: Annotated[
        str | None, typer.Option(envvar="FARGPU_POOL_URL", help="pool manager URL [default: http://127.0.0.1:7000]",
                                 show_default=False)
    ] = None,
    server: Annotated[
        str | None, typer.Option(envvar="FARGPU_SERVER", help="a node server to check (host:port or socket path)",
                                 show_default=False)
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="FARGPU_TOKEN", help="token to try on --server (a static or lease token)",
                                 show_default=False)
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option(envvar="FARGPU_ADMIN_TOKEN", help="admin token to try on the pool manager",
                                 show_default=False)
    ] = None,
    expect_gpu: Annotated[bool, typer.Option("--expect-gpu", help="a simulated device is a failure")] = False,
    backend: Annotated[str, typer.Option(help="node: the backend it will run (auto, cuda, sim)")] = "auto",
    listen: Annotated[str, typer.Option(help="node: its --listen address")] = "127.0.0.1:7100",
    metrics_host: Annotated[str, typer.Option(help="node: its --metrics-host")] = "127.0.0.1",
    metrics_port: Annotated[int, typer.Option(help="node: its --metrics-port")] = 9400,
    port: Annotated[int, typer.Option(help="pool-manager: its REST --port")] = 7000,
    grpc_port: Annotated[int, typer.Option(help="pool-manager: its --grpc-port")] = 7001,
    store: Annotated[str, typer.Option(help="pool-manager: embedded or redis")] = "embedded",
    redis_url: Annotated[str, typer.Option(help="pool-manager: its --redis-url")] = "redis://127.0.0.1:6379/0",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Check this machine's fargpu set-up and say, in plain words, what is wrong and what to do. Exits 1 when a
    check fails."""
    from fargpu.doctor import Options, report, run_checks

    if role not in ("client", "node", "pool-manager"):
        raise typer.BadParameter("expected client, node or pool-manager", param_hint="--role")
    opts = Options(role=role, pool=pool, server=server, token=token, admin_token=admin_token, backend=backend,
                   expect_gpu=expect_gpu, listen=listen, metrics_host=metrics_host, metrics_port=metrics_port,
                   rest_port=port, grpc_port=grpc_port, store=store, redis_url=redis_url)  # fmt: skip
    raise typer.Exit(report(run_checks(opts), as_json))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
