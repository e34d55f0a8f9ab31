"""Production's static files storage: WhiteNoise's compressed, hashed files, with the
`import "./x.js"` lines of the page's ES modules rewritten to the hashed names too, so a browser
never pairs a new module with a cached old one after a deploy."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    support_js_module_import_aggregation = True
