"""The workbench web app: Gradio tabs over the shared core (`workbench`).

    from apps.app import build_app
    build_app().queue(default_concurrency_limit=4).launch()   # or: workbench app

Each tab is one module (`model_tab`, `steering_tab`, `sinks_tab`, `latent_tab`,
`training_tab`) with a `build_ui(ctx)` that adds its components inside the parent Blocks
and returns its handler object (plain methods, callable without a browser). Deleting this
package leaves the library untouched.
"""
