"""The coding tools customers run, headless, against a gateway on the mock upstream:
Claude Code (npm, pinned) for its default model, ``--model sonnet`` and ``--model
haiku``, and ``llm`` (PyPI, pinned) over the OpenAI protocol. Each must finish with
the mock's answer, be billed, leave an access line naming every path it called, and
reach nothing but the gateway (any other host goes to a proxy that refuses it).

Skipped when npm is missing, except under CI, where it fails (``.ci/run`` installs
Node and npm)."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from tests.support.customers import Customer, upstream_exchanges
from tests.support.logs import AccessLines
from tests.support.tools import (
    DeadProxy,
    answer_texts,
    install_claude_code,
    install_llm,
    run_tool,
    tool_env,
)

PROMPT = "Say hello in one short sentence."


@pytest.fixture(scope="module")
def claude() -> Path:
    return install_claude_code()


@pytest.fixture(scope="module")
def llm() -> Path:
    return install_llm()


def check_served(
    access_lines: AccessLines, customer: Customer, mock: MockUpstream, before: int
) -> list[dict]:
    """The tool's access lines: each names its path; every upstream call has one."""
    lines = [line for line in access_lines.lines if line["key_id"] == customer.public_id]
    assert lines and all(line["path"].startswith("/") for line in lines), lines
    # served at the first try: no request shape of the tool's is refused
    assert all(line["status"] == 200 for line in lines), lines
    relayed = len(upstream_exchanges(mock)) - before
    served = [line for line in lines if line["route"] in ("messages", "chat_completions")]
    assert relayed == len(served), (relayed, lines)
    return lines


async def billed(
    gw: app.Gateway, db: asyncpg.Connection, customer: Customer
) -> list[asyncpg.Record]:
    """The customer's ledger rows once the gateway's settlements (tracked tasks that run
    just after each answer) have landed."""
    assert not await gw.state.tasks.settle(5.0), "settlements still running after 5 s"
    return await db.fetch(
        "SELECT requested_model, model, cost_nanos FROM ledger WHERE key_id = $1",
        customer.key_id,
    )


@pytest.mark.parametrize(
    ("choice", "family"),
    [(None, "claude-"), ("sonnet", "claude-sonnet-"), ("haiku", "claude-haiku-")],
    ids=["default", "sonnet", "haiku"],
)
async def test_claude_code_headless(
    claude: Path,
    gw: app.Gateway,
    customer: Customer,
    db: asyncpg.Connection,
    mock_upstream: MockUpstream,
    access_lines: AccessLines,
    tmp_path: Path,
    choice: str | None,
    family: str,
) -> None:
    before = len(upstream_exchanges(mock_upstream))
    args = [str(claude), "-p", PROMPT, "--output-format", "json"]
    if choice is not None:
        args += ["--model", choice]
    async with DeadProxy().running() as proxy:
        env = tool_env(
            tmp_path / "home",
            proxy,
            ANTHROPIC_BASE_URL=gw.url,
            ANTHROPIC_API_KEY=customer.key,
        )
        status, out, err = await run_tool(args, env, tmp_path)
    assert status == 0, (out, err)
    result = json.loads(out)
    assert result["is_error"] is False and result["result"], result
    sent = upstream_exchanges(mock_upstream)[before:]
    assert result["result"].strip() in [text.strip() for text in answer_texts(sent)]
    assert proxy.asked == [], "the CLI reached for something other than the gateway"
    lines = check_served(access_lines, customer, mock_upstream, before)
    rows = await billed(gw, db, customer)
    assert rows and all(row["cost_nanos"] > 0 for row in rows)
    main = json.loads(sent[-1].body)["model"]
    assert main.startswith(family), main
    assert main in {row["requested_model"] for row in rows}
    assert {line["model"] for line in lines if line["route"] == "messages"} <= {
        row["requested_model"] for row in rows
    }


async def test_llm_over_the_openai_protocol(
    llm: Path,
    gw: app.Gateway,
    customer: Customer,
    db: asyncpg.Connection,
    mock_upstream: MockUpstream,
    access_lines: AccessLines,
    tmp_path: Path,
) -> None:
    user_dir = tmp_path / "llm"
    user_dir.mkdir()
    (user_dir / "extra-openai-models.yaml").write_text(
        "- model_id: gateway-sonnet\n"
        "  model_name: claude-sonnet-4-5-20250929\n"
        f"  api_base: {gw.url}/v1\n"
        "  api_key_name: gateway\n"
    )
    (user_dir / "keys.json").write_text(json.dumps({"gateway": customer.key}))
    before = len(upstream_exchanges(mock_upstream))
    async with DeadProxy().running() as proxy:
        env = tool_env(tmp_path / "home", proxy, LLM_USER_PATH=str(user_dir))
        status, out, err = await run_tool(
            [str(llm), "-m", "gateway-sonnet", "--no-log", PROMPT], env, tmp_path
        )
    assert status == 0, (out, err)
    sent = upstream_exchanges(mock_upstream)[before:]
    assert out.strip() in [text.strip() for text in answer_texts(sent)] and out.strip()
    assert proxy.asked == []
    lines = check_served(access_lines, customer, mock_upstream, before)
    assert {line["path"] for line in lines} == {"/v1/chat/completions"}
    (row,) = await billed(gw, db, customer)
    assert (row["requested_model"], row["model"]) == (
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5",
    )
    assert row["cost_nanos"] > 0
