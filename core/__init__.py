"""What every package of the project shares and nothing else: the config idiom
(`core.config`), the user-error type the command line turns into exit code 2
(`core.errors`), and atomic JSON files (`core.files`). Imports nothing of ours, nor
TensorFlow."""
