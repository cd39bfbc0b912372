"""
Files fetched over HTTP once (a corpus, HellaSwag), and the text a prepare script starts from.
"""
import os

from nanogpt.report import fail


def download(url, path, hint):
    """Fetch url into path (atomically: an interrupted download leaves no file), or a one-line error
    ending with hint."""
    import requests
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    print(f"downloading {url}", flush=True)
    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
    except requests.RequestException as e:
        fail(f"could not download {url} ({type(e).__name__}); {hint}")
    with open(path + '.tmp', 'wb') as f:
        f.write(response.content)
    os.replace(path + '.tmp', path)


def read_text(input_file, default_file=None, url=None):
    """The text of input_file; without one, of default_file, first downloaded from url if missing."""
    if not input_file and not os.path.exists(default_file):
        download(url, default_file, f"download it yourself and save it as {os.path.relpath(default_file)}, "
                                    f"or pass --input_file=PATH")
    path = input_file or default_file
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {path} as UTF-8 text ({e.strerror if isinstance(e, OSError) else e})")
