from __future__ import annotations

from tests.support.dashboard import PageClient
from tests.support.keys import unique_email

PASSWORD = "correct horse battery"


async def test_register_create_key_and_every_page(client: PageClient) -> None:
    answer = await client.register(unique_email(), PASSWORD)
    assert answer.status == 200, answer.text
    assert "Overview" in answer.text
    answer = await client.post("/dashboard/keys", {"name": "prod", "rpm": "60"})
    assert answer.status == 200, answer.text
    assert "sk-ali-" in answer.text
    for path in (
        "/dashboard",
        "/dashboard/usage",
        "/dashboard/billing",
        "/dashboard/account",
        "/dashboard/usage.csv?by=ip",
    ):
        answer = await client.get(path)
        assert answer.status == 200, (path, answer.text)
