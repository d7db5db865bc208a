"""A plain HTTP client for the dashboard's pages (cookies kept, the CSRF token of the
last page sent with each form), for the tests that need no real browser."""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_SECRET = re.compile(r'id="new-secret">([^<]+)<')


@dataclass
class Answer:
    status: int
    text: str
    headers: dict[str, str]
    set_cookies: list[str]


class PageClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.session.close()

    async def _answer(self, response: aiohttp.ClientResponse) -> Answer:
        text = await response.text()
        found = _CSRF.search(text)
        if found:
            self.csrf = found.group(1)
        return Answer(
            response.status,
            text,
            dict(response.headers),
            response.headers.getall("Set-Cookie", []),
        )

    async def get(self, path: str, **options: object) -> Answer:
        async with self.session.get(self.base + path, allow_redirects=True, **options) as r:
            return await self._answer(r)

    async def post(
        self, path: str, form: dict[str, str], *, csrf: bool = True, follow: bool = True
    ) -> Answer:
        data = {**form, **({"csrf_token": self.csrf} if csrf else {})}
        async with self.session.post(self.base + path, data=data, allow_redirects=follow) as r:
            return await self._answer(r)

    async def register(self, email: str, password: str) -> Answer:
        await self.get("/dashboard/register")
        return await self.post(
            "/dashboard/register", {"email": email, "password": password, "confirm": password}
        )

    async def login(self, email: str, password: str) -> Answer:
        await self.get("/dashboard/login")
        return await self.post("/dashboard/login", {"email": email, "password": password})

    async def create_key(self, name: str) -> tuple[Answer, str]:
        """Create a key on /dashboard/keys: the page and the secret it shows once."""
        answer = await self.post("/dashboard/keys", {"name": name})
        found = _SECRET.search(answer.text)
        assert found is not None, (answer.status, answer.text[-2000:])
        return answer, found.group(1)
