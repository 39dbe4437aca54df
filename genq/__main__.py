from genq.producer.cli import main

main()
