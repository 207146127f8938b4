from compressor.cli.app import main

main()
