"""The dev patient issuer's sign-in page: pick a demo patient.

The page is meant for everyone, the elderly included: large text, high contrast, a real
`<fieldset>` with a `<legend>` and one labelled radio button per patient (so it works
with a keyboard and a screen reader), a visible focus ring and one clear button.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

_STYLE = """
  :root { color-scheme: light; }
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         font-size: 1.375rem; line-height: 1.5; margin: 0; background: #ffffff;
         color: #111111; }
  main { max-width: 40rem; margin: 0 auto; padding: 1.5rem; }
  h1 { font-size: 2rem; margin: 0 0 1rem; }
  p { margin: 0 0 1rem; }
  fieldset { border: 2px solid #111111; border-radius: 0.5rem; padding: 1rem; margin: 0 0 1.5rem; }
  legend { font-weight: 700; padding: 0 0.5rem; }
  .choice { display: flex; align-items: center; gap: 0.75rem; padding: 0.75rem 0.5rem;
            border-bottom: 1px solid #bbbbbb; }
  .choice:last-child { border-bottom: none; }
  input[type=radio] { width: 1.75rem; height: 1.75rem; flex: none; }
  label.choice { cursor: pointer; }
  label.choice:hover { background: #f0f4fb; }
  .hint { display: block; font-size: 1.125rem; color: #333333; }
  .actions { display: flex; gap: 1rem; flex-wrap: wrap; }
  button { font-size: 1.375rem; padding: 0.75rem 1.75rem; border-radius: 0.5rem;
           border: 2px solid #0b3d91; cursor: pointer; min-height: 3rem; }
  button.primary { background: #0b3d91; color: #ffffff; }
  button.secondary { background: #ffffff; color: #0b3d91; }
  :focus-visible { outline: 4px solid #ff9900; outline-offset: 3px; }
  .error { border: 2px solid #a00000; padding: 1rem; border-radius: 0.5rem; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def choose_patient_page(
    patients: Sequence[tuple[str, str, str]],
    params: Mapping[str, str],
    action: str,
    caregivers: Sequence[tuple[str, str, str, str]] = (),
) -> str:
    """The sign-in form: `patients` are (id, display name, hint) triples; `caregivers`
    (RelatedPerson id, patient id, display name, hint) sign in as themselves for their
    patient (the choice's value is `RelatedPerson/<id>`).

    `params` are the validated authorization request parameters, carried through the
    form as hidden fields so the POST can re-validate and finish the request.
    """
    hidden = "\n".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in params.items()
    )
    if patients:
        # The whole row is the label, so a tap anywhere on it picks the patient.
        choices = "\n".join(
            f'<label class="choice" for="patient-{i}">'
            f'<input type="radio" id="patient-{i}" name="patient" value="{escape(pid)}"'
            f"{' checked' if i == 0 else ''} required>"
            f'<span>{escape(name)}<span class="hint">{escape(hint)}</span></span>'
            "</label>"
            for i, (pid, name, hint) in enumerate(
                [*patients, *((f"RelatedPerson/{r}", n, h) for r, _p, n, h in caregivers)]
            )
        )
        form_body = (
            "<fieldset>\n<legend>Who are you signing in as?</legend>\n"
            f"{choices}\n</fieldset>\n"
            '<div class="actions">\n'
            '<button class="primary" type="submit" name="decision" value="allow">'
            "Sign in</button>\n"
            '<button class="secondary" type="submit" name="decision" value="deny" '
            "formnovalidate>Cancel</button>\n</div>"
        )
    else:
        form_body = (
            '<p class="error" role="alert">There are no demo patients yet. '
            "Start the sandbox with demo data and reload this page.</p>\n"
            '<div class="actions"><button class="secondary" type="submit" name="decision" '
            'value="deny">Cancel</button></div>'
        )
    body = (
        "<h1>Sign in to the patient portal</h1>\n"
        "<p>This is the development sign-in of the EHR sandbox. "
        "Choose a demo patient, then select <strong>Sign in</strong>.</p>\n"
        f'<form method="post" action="{escape(action)}">\n{hidden}\n{form_body}\n</form>'
    )
    return _page("Sign in - EHR sandbox", body)


def error_page(message: str) -> str:
    """A page for an authorization request that cannot be redirected back safely."""
    body = (
        "<h1>Sign-in could not start</h1>\n"
        f'<p class="error" role="alert">{escape(message)}</p>\n'
        "<p>Go back to the application and try again.</p>"
    )
    return _page("Sign-in error - EHR sandbox", body)
