"""nvmf_phoenix.target"""
