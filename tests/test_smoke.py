import pytest


@pytest.mark.django_db
def test_chat_page_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login") or "login" in response.url
