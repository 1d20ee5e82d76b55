from tests.factories import png_bytes, data_url

def test_probe(client, new_key):
    h = {"Authorization": f"Bearer {new_key(None)}"}
    img = data_url(png_bytes(64, 64))
    for body in [
        {"model": "echo", "prompt": "a\x00b", "image": img},
        {"model": "echo", "prompt": "ab", "negative_prompt": "\x00", "image": img},
        {"model": "echo", "prompt": "ab", "image": img, "metadata": {"k\x00": "v\x00"}},
        {"model": "echo", "prompt": "ab", "image": img, "seed": 2**63 - 1},
        {"model": "echo", "prompt": "ab", "image": img, "seed": 2**64},
        {"model": "echo", "prompt": "ab", "image": img, "strength": 1e-320},
        {"model": "echo", "prompt": "ab", "image": img, "guidance_scale": 1e-320},
        {"model": "echo", "prompt": "ab", "image": img, "metadata": {"a": float("1e308")}},
        {"model": "echo", "prompt": "ab", "image": img, "webhook_url": "http://\x00/"},
        {"model": "echo", "prompt": "ab", "image": img, "webhook_url": "http://[::1"},
        {"model": "echo", "prompt": "ab", "image": "http://[::1"},
        {"model": "echo", "prompt": "ab", "image": "http://a:99999/"},
        {"model": "echo", "prompt": "ab", "image": "data:image/png;base64,@@@"},
        {"model": "echo\x00", "prompt": "ab", "image": img},
    ]:
        r = client.post("/v1/jobs", json=body, headers=h)
        print(r.status_code, r.text[:150])
    b = {"model": "echo", "images": [{"image": img, "sku": "a\x00"}], "prompts": ["x\x00"]}
    r = client.post("/v1/batches", json=b, headers=h); print(r.status_code, r.text[:200])
    b = {"model": "echo", "images": [img], "prompts": [{"prompt": "x", "name": "n\x00"}]}
    r = client.post("/v1/batches", json=b, headers=h); print(r.status_code, r.text[:200])
    r = client.post("/v1/jobs", content=b'{"model": "echo", "prompt": "a\\u0000", "image": "x"}', headers={**h, "content-type": "application/json"}); print(r.status_code, r.text[:200])
    for u in ["/v1/batches?cursor=%00", "/v1/batches/00000000-0000-0000-0000-000000000000/jobs?cursor=%00abc", "/v1/webhooks/deliveries?event_id=%00", "/v1/webhooks/deliveries?cursor=zz", "/v1/files/a%00b?expires=1&sig=x", "/v1/files/a?expires=99999999999999999999&sig=x"]:
        r = client.get(u, headers=h); print(u, r.status_code, r.text[:150])
    r = client.post("/v1/webhooks", json={"url": "https://exa\x00mple.com/x"}, headers=h); print(r.status_code, r.text[:200])
    r = client.post("/v1/uploads/presign", json={"filename": "a\x00.png"}, headers=h); print(r.status_code, r.text[:200])
